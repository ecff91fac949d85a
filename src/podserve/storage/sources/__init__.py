"""podserve.storage.sources"""
