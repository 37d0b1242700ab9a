"""host-0: a node agent that runs the pods bound to it as host processes, for tests."""
