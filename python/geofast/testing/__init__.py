"""What geofast's users may reuse in their own tests.

- :class:`StubChatServer` / :class:`StubChatProcess` (:mod:`geofast.testing.openai_stub`): a
  scriptable OpenAI-compatible chat-completions server on 127.0.0.1, to test code that runs
  ``geofast locate --method rag`` (or any OpenAI client) without a real LLM or network.
"""

from __future__ import annotations

from geofast.testing.openai_stub import StubChatProcess, StubChatServer, StubReply, hash_answer

__all__ = ["StubChatProcess", "StubChatServer", "StubReply", "hash_answer"]
