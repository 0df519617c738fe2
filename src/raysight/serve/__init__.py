"""Ray Serve: the gRPC deployment that joins the codecs and the engine."""
