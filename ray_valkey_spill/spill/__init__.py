"""The spill engine (no Ray), its encoding and key grammar, and the thin Ray adapter.

``engine`` spills, restores and deletes objects given as buffers; ``ray_storage`` turns Ray's
``ExternalStorage`` calls into engine calls and is the only module here that imports Ray.
"""
