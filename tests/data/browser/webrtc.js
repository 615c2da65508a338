// The browser side of tests/netns/test_browser.py. The test's HTTP server plays
// Kamailio. As the caller (webrtc.html?role=offer): POST /offer takes this page's
// offer and answers with what relayd wrote. As the callee (?role=answer): GET /offer
// is relayd's offer for this page, POST /answer takes its answer.
// Stats go back to the test every 250 ms (POST /stats); any exception to /error.
"use strict";

function post(path, body) {
  return fetch(path, {method: "POST", body: body});
}

function gathered(pc) {
  // non-trickle signalling: the offer goes out with its candidates (bounded wait)
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
    setTimeout(resolve, 5000);
  });
}

// the remote audio is played out (Chrome decodes and measures it only then) and
// analysed: the strongest frequency should be the plain side's tone
let analyser = null;

function listen(stream) {
  const audio = document.createElement("audio");
  audio.autoplay = true;
  audio.srcObject = stream;
  document.body.appendChild(audio);
  audio.play().catch((e) => post("/error", "play: " + e));
  const context = new AudioContext();
  analyser = context.createAnalyser();
  analyser.fftSize = 8192;
  context.createMediaStreamSource(stream).connect(analyser);
  context.resume();
}

function peakHz() {
  if (analyser === null) return 0;
  const bins = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(bins);
  let best = 0;
  for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
  return bins[best] > -100 ? (best * analyser.context.sampleRate) / analyser.fftSize : 0;
}

async function report(pc) {
  const stats = await pc.getStats();
  const codecs = {};
  const out = {
    connection: pc.connectionState,
    ice: pc.iceConnectionState,
    inbound: null,
    outbound: null,
    remoteOutbound: null,
    transport: null,
    peakHz: peakHz(),
  };
  stats.forEach((s) => {
    if (s.type === "codec") codecs[s.id] = s.mimeType;
  });
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      out.inbound = {
        packetsReceived: s.packetsReceived,
        packetsLost: s.packetsLost,
        codec: codecs[s.codecId] || "",
        totalAudioEnergy: s.totalAudioEnergy || 0,
        totalSamplesReceived: s.totalSamplesReceived || 0,
      };
    } else if (s.type === "outbound-rtp" && s.kind === "audio") {
      out.outbound = {packetsSent: s.packetsSent, codec: codecs[s.codecId] || ""};
    } else if (s.type === "remote-outbound-rtp" && s.kind === "audio") {
      out.remoteOutbound = {ssrc: s.ssrc, packetsSent: s.packetsSent};
    } else if (s.type === "transport") {
      out.transport = {dtlsState: s.dtlsState, srtpCipher: s.srtpCipher || ""};
    }
  });
  document.getElementById("state").textContent = JSON.stringify(out);
  await post("/stats", JSON.stringify(out));
}

async function call(pc, media) {
  media.getTracks().forEach((track) => pc.addTrack(track, media));
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const reply = await post("/offer", pc.localDescription.sdp);
  if (!reply.ok) throw new Error("signalling failed: " + (await reply.text()));
  await pc.setRemoteDescription({type: "answer", sdp: await reply.text()});
}

async function answer(pc, media) {
  const offer = await fetch("/offer");
  if (!offer.ok) throw new Error("no offer: " + (await offer.text()));
  await pc.setRemoteDescription({type: "offer", sdp: await offer.text()});
  media.getTracks().forEach((track) => pc.addTrack(track, media));
  await pc.setLocalDescription(await pc.createAnswer());
  await gathered(pc);
  const reply = await post("/answer", pc.localDescription.sdp);
  if (!reply.ok) throw new Error("signalling failed: " + (await reply.text()));
}

async function main() {
  const role = new URLSearchParams(location.search).get("role") || "offer";
  const media = await navigator.mediaDevices.getUserMedia({audio: true, video: false});
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addEventListener("track", (event) => listen(event.streams[0] || new MediaStream([event.track])));
  await (role === "answer" ? answer(pc, media) : call(pc, media));
  setInterval(() => report(pc).catch((e) => post("/error", String(e))), 250);
}

main().catch((e) => post("/error", String((e && e.stack) || e)));
