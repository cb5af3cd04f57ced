"""Adapters that let ML frameworks call the caches: ``langchain`` (embedding store, chat
history) and ``llamaindex`` (batched embedding wrapper). Each needs its optional extra
(``pip install 'ray-valkey-spill[langchain]'``); importing this package imports none of them.
"""
