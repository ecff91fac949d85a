"""podserve.protocol"""
