#!/bin/sh
# Makes examples/speech.wav, a short English speech sample, from examples/speech.txt.
#
# Needs Debian's festival, festvox-us-slt-hts and sox:
#     apt-get install festival festvox-us-slt-hts sox
# Each line of speech.txt is spoken by Festival's HTS voice "slt" and followed
# by one second of silence (longer than the default end-of-utterance timeout,
# so each sentence gets its own final); sox joins them and converts to 16 kHz
# mono 16-bit. "-D" turns dither off (for the silence too): with dither the file
# differs on every run. The shipped file was made on Debian 12 with festival
# 1:2.5.0-9, festvox-us-slt-hts 0.2010.10.25-4 and sox 14.4.2+git20190427-3.5.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
set --
while IFS= read -r line; do
    [ -n "$line" ] || continue
    n=$((n + 1))
    printf '%s\n' "$line" > "$tmp/$n.txt"
    text2wave -eval "(voice_cmu_us_slt_arctic_hts)" "$tmp/$n.txt" -o "$tmp/$n.wav"
    if [ "$n" -gt 1 ]; then
        set -- "$@" "$tmp/gap.wav"
    else
        sox -n -r "$(soxi -r "$tmp/1.wav")" -c 1 -b 16 -D "$tmp/gap.wav" trim 0 1.0
    fi
    set -- "$@" "$tmp/$n.wav"
done < "$here/speech.txt"
sox "$@" -r 16000 -c 1 -b 16 -e signed-integer -D "$here/speech.wav"
