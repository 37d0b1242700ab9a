// The real node's sandbox process (the pause image), with no dependencies.
module slm.dev/hack/cluster/pause

go 1.26.0
