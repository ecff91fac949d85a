"""podserve.autoscale"""
