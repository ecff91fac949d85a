"""podserve.runtime"""
