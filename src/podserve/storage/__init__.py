"""The model repository on a volume: layout, manifests, integrity, reads, pull and push."""
