"""A live H.264 RTSP server on 127.0.0.1 for the tests: ``/usr/bin/python3 tests/rtsp_server.py PORT``.

Run by Debian's own interpreter, because the venv's Python cannot import gi (PyGObject with
GstRtspServer). tests/rtsp.py starts and stops it; ``--check`` prints what is missing and exits 1.
"""

from __future__ import annotations

import argparse
import signal
import sys

PIPELINE = ("( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1"
            " ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} threads=1"
            " ! rtph264pay name=pay0 pt=96 config-interval=-1 )")
ELEMENTS = ("videotestsrc", "x264enc", "rtph264pay")


def missing() -> str:
    """What of the gi / GstRtspServer / x264enc stack is not installed, or "" when all is."""
    try:
        import gi
        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtsp", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import Gst, GstRtsp, GstRtspServer  # noqa: F401
    except (ImportError, ValueError) as exc:
        return f"gi with GstRtspServer 1.0 ({exc}): apt install python3-gi gir1.2-gst-rtsp-server-1.0"
    Gst.init(None)
    absent = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    return f"GStreamer elements {', '.join(absent)}: apt install gstreamer1.0-plugins-ugly (x264enc), " \
           "gstreamer1.0-plugins-good, gstreamer1.0-plugins-base" if absent else ""


def serve(port: int, width: int, height: int, fps: int) -> int:
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE.format(width=width, height=height, fps=fps))
    factory.set_shared(True)  # one encoder for every client, as a camera has
    server.get_mount_points().add_factory("/cam", factory)
    # A camera streams whether or not anyone watches. Holding the shared media prepared also spares clients
    # gst-rtsp-server's race where the last client leaving unprepares it while a new one is served: 503.
    media = factory.construct(GstRtsp.RTSPUrl.parse(f"rtsp://127.0.0.1:{port}/cam")[1])
    media.prepare(server.get_thread_pool().get_thread(GstRtspServer.RTSPThreadType.MEDIA, GstRtspServer.RTSPContext()))
    if not server.attach(None):  # binds with SO_REUSEADDR: a restart may take the port at once
        print(f"rtsp_server: cannot listen on 127.0.0.1:{port}", file=sys.stderr)
        return 2
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"rtsp_server: serving rtsp://127.0.0.1:{port}/cam", file=sys.stderr, flush=True)
    loop.run()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int, nargs="?", default=8554)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--check", action="store_true", help="print what is missing and exit 1, or exit 0")
    args = parser.parse_args()
    if problem := missing():
        print(problem)
        return 1
    return 0 if args.check else serve(args.port, args.width, args.height, args.fps)


if __name__ == "__main__":
    sys.exit(main())
