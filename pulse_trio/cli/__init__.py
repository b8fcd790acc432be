"""The ``pulse`` command line (also ``python -m pulse_trio``).

    pulse transcribe PATH [options]   transcribe a WAV or Ogg Opus file; PATH - reads stdin
    pulse emulator [options]          serve a local Pulse-compatible server

``pulse transcribe`` reads WAV (PCM 8/16/24/32-bit, IEEE float, a-law, mu-law;
any number of channels, mixed to mono), Ogg Opus, or raw audio described by
``--encoding``/``--sample-rate``. Files go as fast as the connection takes them
(``--realtime`` or ``--speed N`` to pace them like a live source); stdin streams
as it arrives. It writes ``--format text|jsonl|json|srt|vtt`` to stdout or
``--output FILE``. The API key comes from ``SMALLEST_API_KEY`` or
``--api-key-file FILE``, never from an argument, and is never printed;
``--local`` runs against the emulator in-process instead.

Exit statuses:

* 0   success
* 2   usage or input error (bad option, unreadable or unsupported audio, no key)
* 3   authentication or permission refused (AuthenticationError, PermissionDeniedError)
* 4   the service could not be used: the network gave up (ConnectionGaveUpError)
      or the session failed otherwise (any other SessionFailedError)
* 130 interrupted: the first Ctrl-C stops reading and finishes the transcript of
      what was sent; a second one stops at once
"""

from ._args import main

__all__ = ["main"]
