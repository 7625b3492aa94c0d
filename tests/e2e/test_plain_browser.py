"""End-to-end plain transports with real ffmpeg and Chromium against `pysfu serve`:

- ffmpeg sends a VP8 test pattern and Opus into two comedia plain transports of a host
  (a signaling client); a Chromium viewer (the demo page, mediasoup-client) decodes both:
  frames of the pattern's size, and the 440 Hz tone on its audio track (Web Audio).
- A Chromium host shares its camera; the operator (admin API) consumes it on a plain
  transport and ffmpeg records 5 s from the SDP it answers; ffprobe reads a VP8 stream of
  the host's resolution with at least 100 frames.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from pysfu.client import connect
from pysfu.plain import (
    RtpTarget,
    ffmpeg_record_command,
    ffmpeg_send_command,
    plain_producer_parameters,
)
from tests.e2e.test_browser import STATS, new_room, open_host, open_viewer, wait_decoding

Pages = SfuProcess = Any

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="ffmpeg missing: run scripts/install-ffmpeg.sh")

WIDTH, HEIGHT = 320, 240
# The remote audio track's peak level and strongest frequency (Web Audio analyser, ~1.5 s).
TONE = """async () => {
  const stream = document.getElementById('remote').srcObject;
  const ctx = new AudioContext();
  await ctx.resume();
  const source = ctx.createMediaStreamSource(new MediaStream(stream.getAudioTracks()));
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 4096;
  source.connect(analyser);
  const wave = new Float32Array(analyser.fftSize);
  const spectrum = new Float32Array(analyser.frequencyBinCount);
  let peak = 0;
  const hz = [];  // the strongest frequency of each sample that is not silence
  for (let i = 0; i < 15; i++) {
    await new Promise((r) => setTimeout(r, 100));
    analyser.getFloatTimeDomainData(wave);
    let level = 0;
    for (const x of wave) level = Math.max(level, Math.abs(x));
    peak = Math.max(peak, level);
    if (level < 0.02) continue;
    analyser.getFloatFrequencyData(spectrum);
    let best = 0;
    for (let b = 1; b < spectrum.length; b++) if (spectrum[b] > spectrum[best]) best = b;
    hz.push(best * ctx.sampleRate / analyser.fftSize);
  }
  const state = ctx.state;
  await ctx.close();
  return { peak, hz, state };
}"""


class IngestHost:
    """A host on a thread of its own (trio): two comedia plain transports, a VP8 and an Opus
    producer on them; ``targets`` once ready; leaves when ``stop`` is set."""

    def __init__(self, base: str, room: str) -> None:
        self.url = base.replace("http://", "ws://") + "/ws"
        self.room = room
        self.targets: dict[str, RtpTarget] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        async with connect(self.url) as c:
            await c.join(self.room, "host", "ingest")
            for kind, pt, ssrc in (("video", 101, 1111), ("audio", 100, 2222)):
                t = await c.create_plain_transport(self.room, comedia=True)
                await c.connect_plain_transport(self.room, t["transportId"])
                await c.produce(self.room, t["transportId"], kind,
                                plain_producer_parameters(kind, payload_type=pt, ssrc=ssrc))
                self.targets[kind] = RtpTarget(t["tuple"]["localIp"], t["tuple"]["localPort"],
                                               pt, ssrc)
            self.ready.set()
            while not self.stop.is_set():
                await trio.sleep(0.1)


def test_ffmpeg_test_pattern_and_opus_decoded_by_chromium(pages: Pages, sfu: SfuProcess) -> None:
    room = new_room()
    host = IngestHost(sfu.base, room)
    host.thread.start()
    assert host.ready.wait(15) and host.error is None, host.error
    source = ["-re", "-f", "lavfi", "-i", f"testsrc=size={WIDTH}x{HEIGHT}:rate=30",
              "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "45"]
    argv = ffmpeg_send_command(source, video=host.targets["video"], audio=host.targets["audio"],
                               video_bitrate="400k", audio_stream="1:a:0")
    ffmpeg = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        viewer = open_viewer(pages, room, "viewer")
        stats = wait_decoding(viewer, timeout=20, codec="video/VP8")
        assert (stats["element"]["videoWidth"], stats["element"]["videoHeight"]) == (WIDTH,
                                                                                   HEIGHT)
        assert stats["audio"]["packetsReceived"] > 0
        assert (stats["audio"]["codec"] or "").lower() == "audio/opus", stats["audio"]
        # The Opus is decoded: the viewer's audio track carries ffmpeg's 440 Hz tone.
        viewer.mouse.click(1, 1)  # a user gesture: the page may start an AudioContext
        tone = viewer.evaluate(TONE)
        near = [hz for hz in tone["hz"] if abs(hz - 440) < 30]
        assert tone["peak"] > 0.02 and len(near) >= 5 and len(near) * 2 > len(tone["hz"]), tone
    finally:
        ffmpeg.terminate()
        _, err = ffmpeg.communicate(timeout=10)
        host.stop.set()
        host.thread.join(10)
    assert ffmpeg.returncode in (0, -15, 255), err.decode(errors="replace")[-2000:]


def _post(sfu: SfuProcess, path: str) -> dict[str, Any]:
    req = urllib.request.Request(f"{sfu.base}/admin{path}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def _free_udp_port() -> int:
    """A port P where ffmpeg can listen: P and P + 1 (its RTCP port) are both free."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no pair of free UDP ports")


def test_chromium_camera_recorded_by_ffmpeg_through_a_plain_consumer(
        pages: Pages, sfu: SfuProcess, tmp_path: Path) -> None:
    room = new_room()
    host = open_host(pages, room, source="camera", codec="video/VP8")
    producer_id = host.evaluate("() => window.pysfu.state.producers.video.id")
    # Let the encoder settle on its resolution (it starts lower while the estimate ramps).
    deadline = time.monotonic() + 30
    while (host.evaluate(STATS).get("video") or {}).get("framesEncoded", 0) < 90:
        assert time.monotonic() < deadline, "the host encodes nothing"
        time.sleep(0.25)
    port = _free_udp_port()
    created = _post(sfu, f"/rooms/{room}/plain")
    tid = created["transportId"]
    _post(sfu, f"/rooms/{room}/plain/{tid}/connect?ip=127.0.0.1&port={port}")
    answer = _post(sfu, f"/rooms/{room}/plain/{tid}/consume?producerId={producer_id}")
    sdp = tmp_path / "camera.sdp"
    sdp.write_text(answer["sdp"])
    webm = tmp_path / "camera.webm"
    recorder = subprocess.Popen(ffmpeg_record_command(str(sdp), str(webm), seconds=5),
                                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # ffmpeg listens
        cid = answer["consumer"]["id"]
        _post(sfu, f"/rooms/{room}/plain/consumers/{cid}/resume")
        _post(sfu, f"/rooms/{room}/plain/consumers/{cid}/keyframe")
        before = host.evaluate(STATS)["video"]
        # Chromium sends a key frame only when asked, and ffmpeg never asks: while the
        # recorder runs, ask again now and then (the first answer is lost if ffmpeg was still
        # starting, which a loaded machine makes slow).
        deadline = time.monotonic() + 40
        while True:
            try:
                _, err = recorder.communicate(timeout=2)
                break
            except subprocess.TimeoutExpired:
                assert time.monotonic() < deadline, "the recorder did not finish in 40 s"
                _post(sfu, f"/rooms/{room}/plain/consumers/{cid}/keyframe")
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait(5)
    assert recorder.returncode == 0, err.decode(errors="replace")[-2000:]
    host_video = host.evaluate(STATS)["video"]
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name:frame=width,height", "-of", "json", str(webm)],
        capture_output=True, check=True, timeout=60)
    info = json.loads(probe.stdout)
    assert info["streams"][0]["codec_name"] == "vp8"
    frames = info["frames"]
    assert len(frames) >= 100, len(frames)
    # The host's resolution (sampled as recording started and as it ended: the encoder
    # may adapt in between) is what was recorded.
    sizes = {(v["frameWidth"], v["frameHeight"]) for v in (before, host_video)}
    assert (frames[-1]["width"], frames[-1]["height"]) in sizes, (frames[-1], sizes)
    _post(sfu, f"/rooms/{room}/plain/{tid}/close")
