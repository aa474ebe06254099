"""10/12-bit and HDR sources to the 8-bit SDR BT.709 frames the dream works on.

An 8-bit SDR source (not BT.2020, not PQ/HLG) never comes here: the decoder converts it to RGB24 as it
always did, so its frames are unchanged bit for bit. Every other source is converted by swscale to
RGB48 (16 bits per channel: a 10-bit code keeps all its precision) with the frame's own YUV matrix
(BT.2020 included), then here, in float32 (``tone_mode`` picks one of):

- ``"round"``: more than 8 bits, BT.709-like primaries, SDR transfer: rounded to 8 bits (not truncated);
- ``"gamut"``: SDR transfer with BT.2020 primaries: BT.1886 display gamma (2.4) to linear light, the
  BT.2020 -> BT.709 primaries matrix, colours outside BT.709 clipped, gamma 1/2.4 back;
- ``"pq"`` (SMPTE ST 2084) and ``"hlg"`` (ARIB STD-B67): HDR to SDR, below.

**The tone curve (PQ and HLG).** The signal is decoded to display light in cd/m2: PQ by its EOTF; HLG by
its inverse OETF and the BT.2100 OOTF for a 1000 cd/m2 display (system gamma 1.2). The primaries go
from BT.2020 to BT.709 in linear light (negatives from out-of-gamut colours clipped to 0). Then the
ITU-R BT.2390 EETF (its Hermite-spline knee, computed in the PQ domain) maps [0, 1000 cd/m2] onto
[0, 203 cd/m2], applied to max(R, G, B) with the three channels scaled by the same ratio (hue and
saturation kept, no channel clips), and 203 cd/m2 -- BT.2408's HDR reference (diffuse) white --
becomes SDR 100%. Finally the inverse BT.1886 EOTF (gamma 1/2.4) and 8 bits. Why: below the knee
(about 90 cd/m2, SDR 44% linear) the picture is reproduced exactly relative to diffuse white, so
mid-tones and skin keep their contrast instead of the flat, grey look of PQ code values shown as if
they were BT.709 (a naive 8-bit truncation); only the highlights between 90 and 1000 cd/m2 are
compressed, smoothly, into the top of the SDR range. The curve is fixed (no per-clip metadata,
no adaptation over time) so a frame's result never depends on other frames: resume and batching
stay exact. Content above 1000 cd/m2 clips to SDR white.
"""
from __future__ import annotations

import numpy as np

# FFmpeg's enum values (libavutil/pixfmt.h)
_NAMES_PRIMARIES = {1: "bt709", 2: "unspecified", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
                    8: "film", 9: "bt2020", 10: "smpte428", 11: "smpte431", 12: "smpte432"}
_NAMES_TRC = {1: "bt709", 2: "unspecified", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m",
              8: "linear", 13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 18: "arib-std-b67"}
_NAMES_MATRIX = {0: "rgb", 1: "bt709", 2: "unspecified", 5: "bt470bg", 6: "smpte170m", 9: "bt2020nc", 10: "bt2020c"}
BT2020, PQ, HLG = 9, 16, 18
SOURCE_PEAK = 1000.0  # cd/m2 the EETF maps from (PQ mastering peak assumed; HLG's nominal display peak)
REFERENCE_WHITE = 203.0  # cd/m2, BT.2408 HDR reference white: SDR 100%
HLG_GAMMA = 1.2  # BT.2100 system gamma for a 1000 cd/m2 display
CURVE = "BT.2390 EETF on max(R,G,B), 1000 -> 203 cd/m2 (= SDR white), BT.1886 gamma 2.4"
# linear BT.2020 RGB -> linear BT.709 RGB (ITU-R BT.2087)
_M2020_TO_709 = np.array([[1.660491, -0.587641, -0.072850],
                          [-0.124550, 1.132900, -0.008349],
                          [-0.018151, -0.100579, 1.118730]], np.float32)
_PQ_M1, _PQ_M2 = 2610 / 16384, 2523 / 4096 * 128
_PQ_C1, _PQ_C2, _PQ_C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
_HLG_A, _HLG_B, _HLG_C = 0.17883277, 0.28466892, 0.55991073


def bit_depth(frame) -> int:
    """Bits per component of a decoded frame's pixel format."""
    return max(c.bits for c in frame.format.components)


def tone_mode(frame) -> str | None:
    """None: 8-bit SDR, the unchanged RGB24 path; else "round", "gamut", "pq" or "hlg" (see the module doc)."""
    trc, primaries = int(frame.color_trc or 2), int(frame.color_primaries or 2)
    if trc == PQ:
        return "pq"
    if trc == HLG:
        return "hlg"
    if primaries == BT2020:
        return "gamut"
    return "round" if bit_depth(frame) > 8 else None


def mapper_for(frame, current: "ToneMapper | None") -> "ToneMapper | None":
    """The ToneMapper ``frame`` needs (``current`` when it fits; None: the unchanged 8-bit path)."""
    mode = tone_mode(frame)
    if mode is None:
        return None
    wide = int(frame.color_primaries or 2) == BT2020
    if current is not None and (current.mode, current.wide) == (mode, wide):
        return current
    return ToneMapper(mode, wide)


def source_color(frame) -> dict:
    """The report's ``video.source_color``: what the source is and what was done to it."""
    mode = tone_mode(frame)
    return {"bit_depth": bit_depth(frame), "pix_fmt": frame.format.name,
            "primaries": _NAMES_PRIMARIES.get(int(frame.color_primaries or 2), str(frame.color_primaries)),
            "transfer": _NAMES_TRC.get(int(frame.color_trc or 2), str(frame.color_trc)),
            "matrix": _NAMES_MATRIX.get(int(frame.colorspace or 2), str(frame.colorspace)),
            "hdr": mode in ("pq", "hlg"), "tone_mapped": mode in ("pq", "hlg"),
            "conversion": {None: "none (8-bit SDR as is)", "round": "rounded to 8 bits",
                           "gamut": "BT.2020 -> BT.709 primaries", "pq": CURVE, "hlg": "HLG OOTF 1000 cd/m2, " + CURVE}[mode]}


def pq_eotf(e: np.ndarray) -> np.ndarray:
    """PQ signal [0, 1] -> cd/m2 (SMPTE ST 2084)."""
    p = np.power(np.clip(e, 0.0, 1.0), 1.0 / _PQ_M2)
    return 10000.0 * np.power(np.maximum(p - _PQ_C1, 0.0) / (_PQ_C2 - _PQ_C3 * p), 1.0 / _PQ_M1)


def pq_inverse(nits: np.ndarray) -> np.ndarray:
    """cd/m2 -> PQ signal [0, 1]."""
    y = np.power(np.clip(nits / 10000.0, 0.0, 1.0), _PQ_M1)
    return np.power((_PQ_C1 + _PQ_C2 * y) / (1.0 + _PQ_C3 * y), _PQ_M2)


def hlg_inverse_oetf(e: np.ndarray) -> np.ndarray:
    """HLG signal [0, 1] -> scene linear [0, 1] (BT.2100)."""
    e = np.clip(e, 0.0, 1.0)
    return np.where(e <= 0.5, e * e / 3.0, (np.exp((e - _HLG_C) / _HLG_A) + _HLG_B) / 12.0)


def eetf(nits: np.ndarray, src_peak: float = SOURCE_PEAK, dst_peak: float = REFERENCE_WHITE) -> np.ndarray:
    """BT.2390 EETF: cd/m2 in [0, src_peak] -> cd/m2 in [0, dst_peak] (identity below the knee)."""
    src = float(pq_inverse(np.float64(src_peak)))
    e1 = np.clip(pq_inverse(nits) / src, 0.0, 1.0)
    max_lum = float(pq_inverse(np.float64(dst_peak))) / src
    ks = 1.5 * max_lum - 0.5
    t = (e1 - ks) / (1.0 - ks)
    spline = ((2 * t ** 3 - 3 * t ** 2 + 1) * ks + (t ** 3 - 2 * t ** 2 + t) * (1 - ks)
              + (-2 * t ** 3 + 3 * t ** 2) * max_lum)
    return pq_eotf(np.where(e1 < ks, e1, spline) * src)


class ToneMapper:
    """RGB48 frames of one mode -> RGB24. Every transcendental step is a table built once per mode, so a frame
    costs gathers and a few multiply-adds: the signal's decode (per 16-bit code), the tone curve's ratio (per
    sqrt-spaced peak) and the gamma 1/2.4 encode (per sqrt-spaced linear value)."""

    STEPS = 65535  # table resolution; sqrt spacing puts the fine steps near black

    def __init__(self, mode: str, wide: bool = True) -> None:
        self.mode, self.wide = mode, wide  # wide: BT.2020 primaries (converted to BT.709)
        codes = np.arange(self.STEPS + 1, dtype=np.float64) / self.STEPS
        table = {"round": None, "gamut": lambda c: np.power(c, 2.4), "pq": pq_eotf, "hlg": hlg_inverse_oetf}[mode]
        self.decode = None if table is None else table(codes).astype(np.float32)  # linear per code value
        self.encode = np.rint(np.power(codes * codes, 1 / 2.4) * 255).astype(np.uint8)  # index: sqrt(linear)
        self.peak = 10000.0 if mode == "pq" else SOURCE_PEAK  # the largest display light a frame can hold
        peaks = codes * codes * self.peak  # cd/m2 at each index sqrt(peak / self.peak)
        ratio = eetf(peaks) / np.maximum(peaks, 1e-9) / REFERENCE_WHITE
        ratio[0] = 1.0 / REFERENCE_WHITE
        self.ratio = ratio.astype(np.float32)  # SDR relative light per cd/m2, by peak

    def _index(self, x: np.ndarray, top: float) -> np.ndarray:
        """Table index of values in [0, top], sqrt-spaced."""
        return (np.sqrt(np.clip(x, 0.0, top) * (1.0 / top)) * self.STEPS + 0.5).astype(np.int32)

    def __call__(self, rgb16: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint16 (the source's signal) -> [H, W, 3] uint8 SDR BT.709."""
        if self.mode == "round":
            return ((rgb16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        lin = self.decode[rgb16]  # [H, W, 3] float32: linear (gamut), cd/m2 (pq), scene linear (hlg)
        if self.mode == "hlg":  # BT.2100 OOTF: display light of a 1000 cd/m2 display
            ys = lin[..., 0] * 0.2627 + lin[..., 1] * 0.6780 + lin[..., 2] * 0.0593  # [H, W] scene luminance
            lin *= (SOURCE_PEAK * np.power(np.maximum(ys, 1e-12), HLG_GAMMA - 1.0))[..., None]
        if self.wide:  # [H, W, 3] linear BT.709, out-of-gamut negatives clipped
            r, g, b = lin[..., 0], lin[..., 1], lin[..., 2]
            lin = np.stack([m[0] * r + m[1] * g + m[2] * b for m in _M2020_TO_709], axis=2)
            np.maximum(lin, 0.0, out=lin)
        if self.mode != "gamut":  # the tone curve on max(R, G, B), the channels scaled alike
            lin *= self.ratio[self._index(lin.max(axis=2), self.peak)][..., None]
        return self.encode[self._index(lin, 1.0)]


__all__ = ["CURVE", "REFERENCE_WHITE", "SOURCE_PEAK", "ToneMapper", "bit_depth", "eetf", "hlg_inverse_oetf", "mapper_for",
           "pq_eotf", "pq_inverse", "source_color", "tone_mode"]
