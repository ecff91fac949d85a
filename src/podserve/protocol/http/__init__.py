"""podserve.protocol.http"""
