"""The online path: plugin registry, engine and fan-out, fusion, experiments, request
validation, error mapping, the gRPC servicers and server, and process sync."""
