"""Realtime transcription sessions over WebSocket (OpenAI's Realtime API)."""
