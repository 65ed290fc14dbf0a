package netns

const supported = true
