"""Tests of the emulator (pulse_trio.emulator), token audio and compatibility with other clients."""
