"""The example Ray Serve application of cluster_configs/ray/rayservice.yaml (see handler.py)."""
