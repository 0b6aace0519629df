"""Inference backends: plain, synchronous code with no HTTP and no asyncio.

Nothing in this package imports ``server``; the server drives these classes from
one worker thread per loaded model.
"""
