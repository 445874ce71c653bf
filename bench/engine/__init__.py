"""Data plane: engines that put pre-encoded requests on the wire and report each answer to a sink."""
