"""podserve.protocol.queue"""
