"""podserve.kube"""
