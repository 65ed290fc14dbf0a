package protocol

import (
	"mime"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

// channelService is ChannelService's full name.
const channelService = "sharespot.v1.ChannelService"

// CarriedProcedures are the procedures a channel (ChannelService.Carry,
// protocol 7) carries: every unary procedure of the Sharespot services,
// by path ("/sharespot.v1.SessionService/Prompt"). Streams, the channel
// itself and reflection are called directly.
func CarriedProcedures() map[string]bool {
	out := map[string]bool{}
	svcs := sharespotv1.File_sharespot_v1_sharespot_proto.Services()
	for i := range svcs.Len() {
		sd := svcs.Get(i)
		if sd.FullName() == channelService {
			continue
		}
		ms := sd.Methods()
		for j := range ms.Len() {
			if m := ms.Get(j); !m.IsStreamingClient() && !m.IsStreamingServer() {
				out["/"+string(sd.FullName())+"/"+string(m.Name())] = true
			}
		}
	}
	return out
}

// CarriedContentType reports whether a call of this Content-Type is
// carried on a channel: Connect's unary protocol (application/proto or
// application/json), whose answer is a status, headers and a body, all of
// which a reply holds (gRPC's needs HTTP trailers). It returns the media
// type it read.
func CarriedContentType(contentType string) (string, bool) {
	mt, _, _ := mime.ParseMediaType(contentType)
	return mt, mt == "application/proto" || mt == "application/json"
}
