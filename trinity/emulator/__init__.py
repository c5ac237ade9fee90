"""Emulated prefill/decode LLM engines: OpenAI-compatible servers with a latency model.

For local runs, tests and load tests without a GPU. They are EMULATORS: the text is
deterministic filler, while token counts, continuous batching, timing and vLLM's PD
``kv_transfer_params`` handshake are modelled. See ``docs/emulator.md``.

Modules: :mod:`~trinity.emulator.latency` (latency model and its sourced defaults),
:mod:`~trinity.emulator.engine` (continuous-batching step loop, prefix cache),
:mod:`~trinity.emulator.server` (HTTP app), :mod:`~trinity.emulator.text` (toy
tokenizer and filler), :mod:`~trinity.emulator.faults` (fault injection, request log).
"""
