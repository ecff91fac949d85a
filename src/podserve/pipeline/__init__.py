"""podserve.pipeline"""
