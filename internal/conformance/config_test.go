package conformance

import (
	"github.com/sharespot/sharespot/gen/sharespot/v1/sharespotv1connect"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/session"
)

func sessionConfig() session.Config { return session.DefaultConfig() }

func sharespotv1AuthWithoutToken(url string) sharespotv1connect.AuthServiceClient {
	return sharespotv1connect.NewAuthServiceClient(client.NewHTTPClient(), url)
}
