"""Audio from the source into the output: copied packet for packet, or re-encoded to AAC only if it must be.

One ``AudioRoute`` per source audio stream. ``copy`` routes move the source packets (bytes, pts,
dts, duration untouched) into the output stream; a codec the output container cannot hold
(``OutputContainer.supported_codecs``) gets a ``reencode`` route (decode, resample to the AAC
encoder's sample format, encode at the source's sample rate and layout). Each route reads its
own demuxer so the encoder can interleave routes and video by time without buffering a stream.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from .sniff import demuxer_of

log = logging.getLogger(__name__)

AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


@dataclass
class AudioRoute:
    source: object  # av.InputContainer, this route's own
    in_stream: object
    out_stream: object
    mode: str  # "copy" | "reencode"
    resampler: object = None

    def flush(self) -> list:
        """Packets the AAC encoder still holds (nothing for a copy)."""
        return list(self.out_stream.encode(None)) if self.mode == "reencode" else []


def _reencode_stream(out, in_stream):
    import av

    rate = in_stream.codec_context.sample_rate
    rate = rate if rate in AAC_RATES else 48000
    stream = out.add_stream("aac", rate=rate)
    layout = in_stream.codec_context.layout.name if in_stream.codec_context.channels <= 2 else "stereo"
    stream.layout = layout
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    return stream, resampler


def open_audio_outputs(stack: contextlib.ExitStack, audio_src, out) -> tuple[list[AudioRoute], list[str]]:
    """A route (and output stream) per audio stream of ``audio_src`` (a local Path or None); facts per stream."""
    import av

    if audio_src is None:
        return [], []
    demuxer = demuxer_of(audio_src)  # by its bytes: an MPEG-PS clip named .jpg is no image to FFmpeg
    try:
        probe = stack.enter_context(av.open(str(audio_src), "r", format=demuxer))
    except av.FFmpegError as exc:
        log.warning("audio of %s not readable (%s): the video is written without audio", audio_src, exc)
        return [], [f"none (unreadable: {exc})"]
    routes, facts = [], []
    for s in probe.streams.audio:
        source = stack.enter_context(av.open(str(audio_src), "r", format=demuxer))
        in_stream = source.streams[s.index]
        name = in_stream.codec_context.name
        if name in out.supported_codecs:
            routes.append(AudioRoute(source, in_stream, out.add_stream_from_template(in_stream), "copy"))
            facts.append("copied")
        else:
            stream, resampler = _reencode_stream(out, in_stream)
            routes.append(AudioRoute(source, in_stream, stream, "reencode", resampler))
            facts.append(f"aac (re-encoded: {out.format.name} cannot hold {name})")
            log.info("audio stream %d (%s) re-encoded to AAC: the output container cannot hold it", s.index, name)
    return routes, facts


def _outside(packet, span) -> bool:
    """True if the packet plays entirely outside ``span`` = (start, end) seconds (None: keep everything)."""
    if span is None or packet.pts is None:
        return False
    start = packet.pts * packet.time_base
    return start >= span[1] or start + (packet.duration or 0) * packet.time_base <= span[0]


def audio_packets(route: AudioRoute, span: tuple | None = None) -> Iterator:
    """The route's packets for the output, in decode order (copies keep their bytes and timestamps).

    ``span`` (start, end) in seconds keeps only the packets that play within it (a frame range's audio).
    """
    import av

    try:
        for packet in route.source.demux(route.in_stream):
            if packet.dts is None or packet.size == 0 or _outside(packet, span):
                continue
            if route.mode == "copy":
                packet.stream = route.out_stream
                yield packet
                continue
            for frame in packet.decode():
                for rf in route.resampler.resample(frame):
                    yield from route.out_stream.encode(rf)
    except av.FFmpegError as exc:  # a cut-short source: the audio ends where its file does
        log.warning("audio stream %d ends early: %s", route.in_stream.index, exc)
