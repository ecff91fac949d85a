"""podserve.protocol.grpc"""
