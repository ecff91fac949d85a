"""podserve.batching"""
