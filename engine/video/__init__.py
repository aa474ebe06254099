"""Video I/O and flow: probing and sniffing (probe), frames out (decode), frames back in with the
source's timing and audio (encode, remux), and optical flow with its reliability mask (flow).

Submodules import PyAV and OpenCV lazily, so importing this package costs nothing.
"""
