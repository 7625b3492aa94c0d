// pysfu demo page: a host shares screen or camera, viewers watch. Built on the unmodified
// mediasoup-client Device; signaling is pysfu's JSON-over-WebSocket protocol (see DESIGN.md).
//
// URL: /                          landing page (open a room / watch a room)
//      /?room=ID&role=host        host view (peerId kept in sessionStorage: a reload rejoins
//                                 as the same peer and resumes sharing; a dropped WebSocket
//                                 is reopened and the session resumed: same transports and
//                                 producers, viewers see no cut)
//      /?room=ID&role=viewer      viewer view
//      &simulcast=1               (host) send video as three simulcast layers (r0 ¼, r1 ½, r2 full
//                                 resolution); viewers pick one with setPreferredLayers
//      &scalability=L1T3          (host) scalabilityMode of each video encoding (L<s>T<t>[_KEY],
//                                 s, t 1..3; temporal layers: viewers can ask for fewer frames
//                                 per second; spatial layers in one stream: VP9 SVC, e.g.
//                                 L3T3_KEY, or AV1 with the dependency descriptor)
//      &token=JWT                 join token minted by the app server (needed when the server
//                                 has auth_secret): sent in join; the peer id is the token's
//                                 identity. Without a secret configured, rooms are open and
//                                 no token is needed.
//      &name=Ada                  display name shown with this page's chat messages (open rooms:
//                                 sent as the join's displayName; with a token, the server uses
//                                 the token's name claim instead); without one, the peer id
//      &hops=N                    set by a cluster's placement redirect (this page moved here
//                                 from another node's; the join says `redirected`)
//
// Test hook: window.pysfu = { state, stats(), setPreferredLayers(spatial, temporal?),
//                            serverStats(query), restartIce(direction), dropSignaling(),
//                            sendData(text | {bytes}) } (see stats() below).

import { Device } from 'mediasoup-client';
import { Signaling } from './signaling.js';
import { Chat, fnv1a } from './chat.js';

const ROOM_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
const $ = (id) => document.getElementById(id);
// The join token handed to this page by the app that linked here (?token=), or null.
const TOKEN = new URLSearchParams(location.search).get('token');
// The display name asked for with ?name= (open rooms; 1–128 characters), or null.
const NAME = (() => {
  const name = (new URLSearchParams(location.search).get('name') || '').trim();
  return name && name.length <= 128 && !/[\u0000-\u001f\u007f-\u009f]/.test(name) ? name : null;
})();
// A host whose WebSocket dropped retries opening a new one this long (the server keeps its
// session for host_grace_period, 10 s by default), first after RESUME_RETRY_MS, doubling.
const RESUME_PATIENCE_MS = 15000;
const RESUME_RETRY_MS = 200;
// A join answered 'redirect {url}' (a cluster sends a host opening a new room to a less loaded
// node): the page moves to that node's page (same query, &hops=N; the page's Content-Security-
// Policy lets it open a WebSocket to its own origin only) and joins there with
// `redirected: true`, after at most this many hops.
const MAX_REDIRECTS = 3;
const HOPS = Number(new URLSearchParams(location.search).get('hops')) || 0;

// ---- state (read by the tests through window.pysfu.state) ------------------------------------

const state = {
  role: null, // 'host' | 'viewer' | null (landing page)
  roomId: null,
  peerId: null,
  displayName: null, // what others see with our chat messages (the server's answer to join)
  withToken: TOKEN !== null, // joined with a token (its identity is our peerId)
  signaling: 'new',
  joined: false,
  reconnected: false,
  resuming: false, // host: the WebSocket dropped, a resume is under way
  resumes: 0, // host: sessions resumed after a WebSocket drop
  hops: HOPS, // redirects this page followed to get here (cluster placement)
  iceRestarts: 0, // ICE restarts done (transport.restartIce after a restartIce request)
  deviceLoaded: false,
  handlerName: null,
  transports: {}, // direction -> connectionState
  sharing: false,
  busy: false, // a start/stop/end is in progress
  source: null,
  codec: null, // mimeType the host asked for (null = router's first)
  codecs: [], // video mimeTypes this browser can send to this router
  producers: {}, // kind -> {id, codec}
  consumers: [], // [{id, producerId, kind, codec}]
  simulcast: false, // host: video produced as three simulcast layers
  scalability: null, // host: scalabilityMode of each video encoding (e.g. L1T3)
  events: [], // notifications received: {event, data, t}
  roomClosed: null, // reason, once the room is closed
  ended: false,
  error: null,
};

let sig = null;
let resumeToken = null; // host: the server's single-use secret for resuming this session
const restartingIce = new Set(); // transports with an ICE restart in progress
let device = null;
let sendTransport = null;
let recvTransport = null;
const producers = new Map(); // kind -> mediasoup Producer
let localStream = null;
const consumers = new Map(); // consumerId -> mediasoup Consumer
const consumerByProducer = new Map(); // producerId -> Consumer
const wantedProducers = new Set(); // producerIds being or to be consumed
let consumeChain = Promise.resolve();
let chat = null; // the chat panel (data channels), once joined

// ---- small helpers ---------------------------------------------------------------------------

function randomId(bytes = 16) {
  const buf = new Uint8Array(bytes);
  crypto.getRandomValues(buf);
  return Array.from(buf, (b) => b.toString(16).padStart(2, '0')).join('');
}

function randomRoomId() {
  const alphabet = 'abcdefghijkmnpqrstuvwxyz23456789';
  const buf = new Uint8Array(10);
  crypto.getRandomValues(buf);
  return Array.from(buf, (b) => alphabet[b % alphabet.length]).join('');
}

function log(text, level = 'info') {
  const line = `${new Date().toISOString().slice(11, 23)} ${text}`;
  (level === 'error' ? console.error : level === 'warn' ? console.warn : console.log)(`[pysfu] ${text}`);
  const li = document.createElement('li');
  li.textContent = line;
  li.className = level;
  const ol = $('log');
  ol.prepend(li);
  while (ol.children.length > 200) ol.lastChild.remove();
}

function showError(err) {
  const msg = err instanceof Error ? err.message : String(err);
  state.error = msg;
  log(`error: ${msg}`, 'error');
  const el = $('error');
  el.textContent = msg;
  el.hidden = false;
}

function clearError() {
  state.error = null;
  $('error').hidden = true;
}

function showView(name) {
  for (const id of ['landing', 'host', 'viewer', 'ended']) $(id).hidden = id !== name;
}

function setPill(key, value) {
  const el = $(`st-${key}`);
  if (!el) return;
  el.textContent = value;
  el.parentElement.dataset.state = value;
}

function shareLink(roomId) {
  return `${location.origin}/?room=${encodeURIComponent(roomId)}&role=viewer`;
}

function hostPeerId(roomId) {
  const key = `pysfu:host:${roomId}`;
  let id = sessionStorage.getItem(key);
  if (!id) {
    id = typeof crypto.randomUUID === 'function' ? crypto.randomUUID() : randomId();
    sessionStorage.setItem(key, id);
  }
  return id;
}

function shareKey(roomId) {
  return `pysfu:share:${roomId}`;
}

function forgetRoom(roomId) {
  sessionStorage.removeItem(`pysfu:host:${roomId}`);
  sessionStorage.removeItem(shareKey(roomId));
}

// ---- connection, device, transports ----------------------------------------------------------

function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

async function connect(roomId, role, peerId) {
  sig = new Signaling(wsUrl(), {
    onNotification: onNotification,
    onStateChange: (s, detail) => {
      state.signaling = s;
      setPill('signaling', s);
      if (s === 'closed' && !(detail && detail.byUs) && !state.ended && !state.resuming) {
        log(`signaling closed (${detail ? detail.code : '?'})`, 'warn');
        if (resumeToken && state.joined) {
          resumeSession();
          return;
        }
        endView('Disconnected', 'The connection to the server was lost.', { reconnect: true });
      }
    },
  });
  await sig.open();
  log('signaling open');
  // With a token the server takes our peer id from it (a reload with the same token rejoins
  // as the same peer); without one, we name ourselves.
  const joined = await join(roomId, role, peerId);
  state.peerId = joined.peerId;
  state.displayName = joined.displayName || joined.peerId;
  resumeToken = joined.resumeToken || null; // hosts only
  state.joined = true;
  state.reconnected = !!joined.reconnected;
  log(`joined room ${roomId} as ${role}${joined.reconnected ? ' (reconnected)' : ''}`);
  const { rtpCapabilities } = await sig.request('getRouterRtpCapabilities', { roomId });
  device = new Device();
  await device.load({ routerRtpCapabilities: rtpCapabilities });
  state.deviceLoaded = true;
  state.handlerName = device.handlerName;
  log(`device loaded (${device.handlerName})`);
}

// join; a 'redirect {url}' answer moves the page to that node (redirectedPage).
async function join(roomId, role, peerId) {
  const request = TOKEN ? { roomId, role, token: TOKEN } : { roomId, role, peerId };
  if (!TOKEN && NAME) request.displayName = NAME;
  if (HOPS > 0) request.redirected = true; // we came through a redirect: stay here
  const answer = await sig.requestAnswer('join', request);
  if (answer.event !== 'redirect') return answer.data;
  const target = redirectedPage(answer.data.url);
  log(`redirected to ${target}${answer.data.node ? ` (node ${answer.data.node})` : ''}`);
  sig.close();
  location.replace(target);
  return new Promise(() => {}); // the page goes away
}

// The demo page of the node whose signaling URL is `url` (ws[s]://host:port/ws), with this
// page's query and one more hop.
function redirectedPage(url) {
  let target;
  try {
    target = new URL(url);
  } catch {
    throw new Error(`join: bad redirect (${url})`);
  }
  if (!['ws:', 'wss:'].includes(target.protocol) || HOPS >= MAX_REDIRECTS) {
    throw new Error(`join: too many or bad redirects (${url})`);
  }
  const page = new URL(`${target.protocol === 'wss:' ? 'https' : 'http'}://${target.host}/`);
  const query = new URLSearchParams(location.search);
  query.set('hops', String(HOPS + 1));
  page.search = query.toString();
  return page.toString();
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// The host's WebSocket dropped: open a new one and resume the session (the server kept our
// transports and producers, and the viewers' consumers, for host_grace_period). The
// mediasoup-client Transport and Producer objects go on; a transport that lost its
// connection meanwhile restarts ICE. If the server refuses (the grace period ended, the room
// closed), the page ends as before and a reload joins afresh.
async function resumeSession() {
  state.resuming = true;
  setPill('signaling', 'resuming');
  const deadline = Date.now() + RESUME_PATIENCE_MS;
  let delay = RESUME_RETRY_MS;
  try {
    for (;;) {
      try {
        await sig.open();
        break;
      } catch (err) {
        if (Date.now() + delay > deadline) throw err;
        await sleep(delay);
        delay = Math.min(2 * delay, 2000);
      }
    }
    const request = { roomId: state.roomId, peerId: state.peerId, resumeToken };
    if (TOKEN) request.token = TOKEN;
    const answer = await sig.request('resume', request);
    resumeToken = answer.resumeToken;
    const live = new Set(answer.transports.map((t) => t.id));
    for (const t of [sendTransport, recvTransport]) {
      if (t && !t.closed && !live.has(t.id)) throw new Error(`the server closed our ${t.direction} transport`);
    }
    state.resumes += 1;
    state.resuming = false;
    setPill('signaling', sig.state);
    log(`resumed the session (${answer.transports.length} transport(s))`);
    for (const t of [sendTransport, recvTransport]) {
      if (t && ['disconnected', 'failed'].includes(t.connectionState)) restartIce(t);
    }
  } catch (err) {
    state.resuming = false;
    log(`resume failed: ${err.message}`, 'warn');
    endView('Disconnected', 'The connection to the server was lost.', { reconnect: true });
  }
}

// ICE restart of one of our transports (its connection went disconnected or failed, e.g. the
// network changed): fresh ICE credentials from the server, then mediasoup-client's
// restartIce; DTLS, producers and consumers stay.
async function restartIce(transport) {
  if (!transport || transport.closed || restartingIce.has(transport)) return;
  if (state.resuming || !sig || sig.state !== 'open') return; // done after the resume
  restartingIce.add(transport);
  try {
    const { iceParameters } = await sig.request('restartIce', {
      roomId: state.roomId,
      transportId: transport.id,
    });
    await transport.restartIce({ iceParameters });
    state.iceRestarts += 1;
    log(`${transport.direction} transport: ICE restarted`);
  } catch (err) {
    log(`${transport.direction} transport: ICE restart failed: ${err.message}`, 'warn');
    if (transport.connectionState === 'failed') {
      showError(`the ${transport.direction} transport failed (ICE/DTLS to the media server); reload to retry`);
    }
  } finally {
    restartingIce.delete(transport);
  }
}

function sendCaps() {
  return device.sendRtpCapabilities || device.rtpCapabilities;
}

function recvCaps() {
  return device.recvRtpCapabilities || device.rtpCapabilities;
}

async function createTransport(direction) {
  const roomId = state.roomId;
  // Every transport carries data channels too (the chat): sctpCapabilities in, sctpParameters out.
  // (mediasoup-client >= 3.20 no longer has device.sctpCapabilities: the usual numbers then.)
  const sctpCapabilities = device.sctpCapabilities || { numStreams: { OS: 1024, MIS: 1024 } };
  const p = await sig.request('createTransport', { roomId, direction, sctpCapabilities });
  const options = {
    id: p.id || p.transportId,
    iceParameters: p.iceParameters,
    iceCandidates: p.iceCandidates,
    dtlsParameters: p.dtlsParameters,
    sctpParameters: p.sctpParameters,
  };
  const transport =
    direction === 'send' ? device.createSendTransport(options) : device.createRecvTransport(options);
  transport.on('connect', ({ dtlsParameters }, callback, errback) => {
    sig
      .request('connectTransport', { roomId, transportId: transport.id, dtlsParameters })
      .then(() => callback(), errback);
  });
  if (direction === 'send') {
    transport.on('produce', ({ kind, rtpParameters }, callback, errback) => {
      sig
        .request('produce', { roomId, transportId: transport.id, kind, rtpParameters })
        .then((d) => callback({ id: d.id }), errback);
    });
    transport.on('producedata', ({ sctpStreamParameters, label, protocol }, callback, errback) => {
      sig
        .request('produceData', { roomId, transportId: transport.id, sctpStreamParameters, label, protocol })
        .then((d) => callback({ id: d.id }), errback);
    });
  }
  transport.on('connectionstatechange', (s) => {
    state.transports[direction] = s;
    setPill(direction, s);
    log(`${direction} transport ${s}`, s === 'failed' ? 'error' : 'info');
    if (s === 'disconnected' || s === 'failed') restartIce(transport);
  });
  state.transports[direction] = 'new';
  $(`pill-${direction}`).hidden = false;
  setPill(direction, 'new');
  log(`${direction} transport created`);
  return transport;
}

function onNotification(event, data) {
  state.events.push({ event, data, t: Date.now() });
  log(`← ${event} ${JSON.stringify(data)}`);
  if (chat) chat.onNotification(event, data);
  switch (event) {
    case 'newProducer':
      if (state.role === 'viewer') enqueueConsume(data.producerId);
      break;
    case 'producerClosed':
      if (state.role === 'viewer') removeProducer(data.producerId);
      break;
    case 'roomClosed':
      roomClosed(data.reason);
      break;
    case 'transportClosed':
      transportClosed(data.transportId, data.reason);
      break;
    default:
      break;
  }
}

function closeMedia() {
  for (const producer of producers.values()) producer.close();
  producers.clear();
  state.producers = {};
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  localStream = null;
  for (const consumer of consumers.values()) consumer.close();
  consumers.clear();
  consumerByProducer.clear();
  wantedProducers.clear();
  state.consumers = [];
  for (const t of [sendTransport, recvTransport]) {
    if (!t) continue;
    t.close(); // mediasoup-client emits no connectionstatechange for a local close
    state.transports[t.direction] = 'closed';
    setPill(t.direction, 'closed');
  }
  sendTransport = recvTransport = null;
  $('preview').srcObject = null;
  $('remote').srcObject = null;
  state.sharing = false;
}

function endView(title, text, { reconnect = false } = {}) {
  if (state.ended) return;
  state.ended = true;
  closeMedia();
  if (sig) sig.close();
  $('ended-title').textContent = title;
  $('ended-text').textContent = text;
  $('reconnect').hidden = !reconnect;
  showView('ended');
}

function roomClosed(reason) {
  state.roomClosed = reason || 'closed';
  if (state.role === 'host') forgetRoom(state.roomId);
  const text =
    reason === 'host_left'
      ? 'The host ended the room.'
      : `The room was closed${reason ? ` (${reason})` : ''}.`;
  endView('Room closed', text);
}

function transportClosed(transportId, reason) {
  for (const t of [sendTransport, recvTransport]) {
    if (t && t.id === transportId) {
      showError(`the server closed the ${t.direction} transport (${reason})`);
      state.transports[t.direction] = 'closed';
      setPill(t.direction, 'closed');
    }
  }
}

// ---- host ------------------------------------------------------------------------------------

function pickCodec(mimeType) {
  if (!mimeType) return undefined;
  const wanted = mimeType.toLowerCase();
  const candidates = sendCaps().codecs.filter((c) => c.mimeType.toLowerCase() === wanted);
  if (!candidates.length) throw new Error(`this browser cannot send ${mimeType} to this server`);
  // H264: prefer packetization-mode 1 (what the router offers first).
  return (
    candidates.find((c) => String((c.parameters || {})['packetization-mode'] ?? '') === '1') ||
    candidates[0]
  );
}

function hostControls() {
  const busy = !!state.busy;
  $('start').disabled = busy || state.sharing || !sendTransport;
  $('stop').disabled = busy || !state.sharing;
  $('end-room').disabled = busy || !state.joined;
  for (const el of document.querySelectorAll('input[name=source], #codec, #mic')) {
    el.disabled = busy || state.sharing;
  }
  $('host-overlay').hidden = state.sharing;
  const info = Object.entries(state.producers)
    .map(([kind, p]) => `${kind}: ${p.codec || '?'}`)
    .join(' · ');
  $('host-info').textContent = state.sharing ? `Sending ${info}` : '';
}

async function getMedia(source, mic) {
  if (source === 'screen') {
    const stream = await navigator.mediaDevices.getDisplayMedia({
      video: { frameRate: { ideal: 30 } },
      audio: true,
    });
    if (!stream.getAudioTracks().length && mic) {
      try {
        const micStream = await navigator.mediaDevices.getUserMedia({ audio: true });
        micStream.getAudioTracks().forEach((t) => stream.addTrack(t));
      } catch (err) {
        log(`no microphone: ${err.message}`, 'warn');
      }
    }
    const [video] = stream.getVideoTracks();
    if (video && 'contentHint' in video) video.contentHint = 'detail';
    return stream;
  }
  return navigator.mediaDevices.getUserMedia({
    video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
    audio: mic,
  });
}

async function startSharing({ source, codec, mic }) {
  if (state.sharing || state.busy) return;
  state.busy = true;
  hostControls();
  clearError();
  try {
    const codecCap = pickCodec(codec);
    localStream = await getMedia(source, mic);
    $('preview').srcObject = localStream;
    state.source = source;
    state.codec = codec || null;
    const [videoTrack] = localStream.getVideoTracks();
    const [audioTrack] = localStream.getAudioTracks();
    if (videoTrack) {
      // Simulcast: three layers at ¼, ½ and full resolution (mediasoup-client names them
      // r0, r1, r2); the SFU forwards one of them to each viewer.
      let encodings = state.simulcast
        ? [
            { scaleResolutionDownBy: 4, maxBitrate: 150000 },
            { scaleResolutionDownBy: 2, maxBitrate: 500000 },
            { scaleResolutionDownBy: 1, maxBitrate: 1500000 },
          ]
        : undefined;
      if (state.scalability) {
        encodings = (encodings || [{}]).map((e) => ({ ...e, scalabilityMode: state.scalability }));
      }
      const p = await sendTransport.produce({ track: videoTrack, codec: codecCap, encodings });
      watchProducer(p);
    }
    if (audioTrack) {
      const p = await sendTransport.produce({ track: audioTrack });
      watchProducer(p);
    }
    state.sharing = true;
    sessionStorage.setItem(shareKey(state.roomId), JSON.stringify({ source, codec, mic }));
    log(`sharing ${source}: ${Object.values(state.producers).map((p) => p.codec).join(', ')}`);
  } catch (err) {
    showError(err);
    await stopSharing({ quiet: true });
  } finally {
    state.busy = false;
    hostControls();
  }
}

function watchProducer(producer) {
  producers.set(producer.kind, producer);
  const codec = producer.rtpParameters.codecs[0] && producer.rtpParameters.codecs[0].mimeType;
  state.producers[producer.kind] = { id: producer.id, codec };
  log(`producing ${producer.kind} ${codec} (${producer.id})`);
  producer.on('trackended', () => {
    log(`${producer.kind} track ended`, 'warn');
    stopSharing();
  });
}

async function stopSharing({ quiet = false } = {}) {
  const list = [...producers.values()];
  producers.clear();
  state.producers = {};
  state.sharing = false;
  sessionStorage.removeItem(shareKey(state.roomId));
  for (const producer of list) {
    producer.close();
    try {
      await sig.request('closeProducer', { roomId: state.roomId, producerId: producer.id });
    } catch (err) {
      if (!quiet) log(`closeProducer: ${err.message}`, 'warn');
    }
  }
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  localStream = null;
  $('preview').srcObject = null;
  if (!quiet) log('stopped sharing');
  hostControls();
}

async function endRoom() {
  state.busy = true;
  hostControls();
  try {
    await sig.request('leave', { roomId: state.roomId });
  } catch (err) {
    log(`leave: ${err.message}`, 'warn');
  }
  forgetRoom(state.roomId);
  state.roomClosed = 'host_left';
  endView('Room ended', 'You ended the room; viewers were disconnected.');
}

async function runHost(roomId) {
  showView('host');
  $('share-link').value = shareLink(roomId);
  $('copy-link').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText($('share-link').value);
      $('copy-link').textContent = 'Copied';
    } catch {
      $('share-link').select();
    }
  });
  const selected = () => ({
    source: document.querySelector('input[name=source]:checked').value,
    codec: $('codec').value || null,
    mic: $('mic').checked,
  });
  $('start').addEventListener('click', () => startSharing(selected()));
  $('stop').addEventListener('click', () => stopSharing());
  $('end-room').addEventListener('click', () => endRoom());
  hostControls();

  const peerId = hostPeerId(roomId);
  state.peerId = peerId;
  await connect(roomId, 'host', peerId);
  sendTransport = await createTransport('send');
  startChat(sendTransport);
  state.codecs = [
    ...new Set(
      sendCaps()
        .codecs.filter((c) => c.kind === 'video' && !/\/rtx$/i.test(c.mimeType))
        .map((c) => c.mimeType),
    ),
  ];
  for (const opt of $('codec').options) {
    if (opt.value) opt.disabled = !state.codecs.some((m) => m.toLowerCase() === opt.value.toLowerCase());
  }
  hostControls();

  // After a reload: resume what this tab was sharing (same peerId, so the server has
  // already closed our old producers and told the viewers).
  const saved = JSON.parse(sessionStorage.getItem(shareKey(roomId)) || 'null');
  if (saved) {
    document.querySelector(`input[name=source][value=${saved.source === 'camera' ? 'camera' : 'screen'}]`).checked = true;
    $('codec').value = saved.codec || '';
    $('mic').checked = saved.mic !== false;
    log('resuming the previous share');
    await startSharing(saved);
  }
}

// ---- viewer ----------------------------------------------------------------------------------

function enqueueConsume(producerId) {
  if (wantedProducers.has(producerId) || consumerByProducer.has(producerId)) return;
  wantedProducers.add(producerId);
  consumeChain = consumeChain
    .then(() => consume(producerId))
    .catch((err) => showError(err));
}

async function consume(producerId) {
  if (!wantedProducers.has(producerId) || !recvTransport || state.ended) return;
  const d = await sig.request('consume', {
    roomId: state.roomId,
    transportId: recvTransport.id,
    producerId,
    rtpCapabilities: recvCaps(),
  });
  const consumer = await recvTransport.consume({
    id: d.id,
    producerId: d.producerId,
    kind: d.kind,
    rtpParameters: d.rtpParameters,
  });
  if (!wantedProducers.has(producerId)) {
    // producerClosed arrived while we were setting it up.
    consumer.close();
    return;
  }
  consumers.set(consumer.id, consumer);
  consumerByProducer.set(producerId, consumer);
  const codec = d.rtpParameters.codecs[0] && d.rtpParameters.codecs[0].mimeType;
  // type (simple / simulcast / svc) and scalabilityMode as the server answered them.
  const encoding = d.rtpParameters.encodings[0] || {};
  state.consumers.push({ id: consumer.id, producerId, kind: consumer.kind, codec, type: d.type,
    scalabilityMode: encoding.scalabilityMode });
  consumer.on('transportclose', () => dropConsumer(consumer));
  log(`consuming ${consumer.kind} ${codec} (${consumer.id})`);
  updateRemote();
  await sig.request('resumeConsumer', { roomId: state.roomId, consumerId: consumer.id });
}

function dropConsumer(consumer) {
  consumers.delete(consumer.id);
  consumerByProducer.delete(consumer.producerId);
  state.consumers = state.consumers.filter((c) => c.id !== consumer.id);
  if (!consumer.closed) consumer.close();
  updateRemote();
}

function removeProducer(producerId) {
  wantedProducers.delete(producerId);
  const consumer = consumerByProducer.get(producerId);
  if (consumer) {
    dropConsumer(consumer);
    log(`removed ${consumer.kind} track`);
  }
}

function updateRemote() {
  const video = $('remote');
  const tracks = [...consumers.values()].map((c) => c.track);
  const hasVideo = tracks.some((t) => t.kind === 'video');
  const hasAudio = tracks.some((t) => t.kind === 'audio');
  video.srcObject = tracks.length ? new MediaStream(tracks) : null;
  if (tracks.length) video.play().catch(() => {});
  $('viewer-overlay').hidden = hasVideo;
  $('viewer-overlay').textContent = state.ended ? '' : 'Waiting for the host to share…';
  $('unmute').disabled = !hasAudio;
  $('viewer-info').textContent = state.consumers.map((c) => `${c.kind}: ${c.codec}`).join(' · ');
}

async function runViewer(roomId) {
  showView('viewer');
  $('unmute').addEventListener('click', () => {
    const video = $('remote');
    video.muted = !video.muted;
    video.play().catch(() => {});
    $('unmute').textContent = video.muted ? 'Unmute' : 'Mute';
  });
  $('viewer-leave').addEventListener('click', async () => {
    try {
      await sig.request('leave', { roomId });
    } catch (err) {
      log(`leave: ${err.message}`, 'warn');
    }
    endView('You left', 'You left the room.');
  });

  state.peerId = typeof crypto.randomUUID === 'function' ? crypto.randomUUID() : randomId();
  await connect(roomId, 'viewer', state.peerId);
  recvTransport = await createTransport('recv');
  state.recvTransportId = recvTransport.id;
  updateRemote();
  const { producers: list } = await sig.request('getProducers', { roomId });
  log(`${list.length} producer(s) in the room`);
  for (const p of list) enqueueConsume(p.id);
  startChat(null);
}

// ---- chat (data channels) --------------------------------------------------------------------

// The host chats on its media send transport; a viewer asks for a send transport for data
// (refused unless the server allows viewer_data_channels: then the panel is read only).
// Messages of others arrive on the recv transport (the host creates one on first need).
function startChat(send) {
  chat = new Chat({
    state,
    sig,
    $,
    log,
    getRecvTransport: async () => {
      if (!recvTransport) {
        recvTransport = await createTransport('recv');
        state.recvTransportId = recvTransport.id;
      }
      return recvTransport;
    },
    createSendTransport: async () => {
      sendTransport = await createTransport('send');
      return sendTransport;
    },
  });
  chat.start({ sendTransport: send }).catch((err) => log(`chat: ${err.message}`, 'error'));
}

// Test hook: send a chat message (a string, or {bytes: n} for n generated bytes, i*7+(i>>10)).
function sendData(message) {
  if (!chat) return false;
  if (typeof message === 'string') return chat.send(message);
  const bytes = new Uint8Array(message.bytes);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + (i >> 10)) & 0xff;
  return chat.send(bytes) ? fnv1a(bytes) : false;
}

// ---- stats (test hook) -----------------------------------------------------------------------

function pick(r, keys) {
  const out = {};
  for (const k of keys) if (r[k] !== undefined) out[k] = r[k];
  return out;
}

async function transportStats(transport) {
  if (!transport || transport.closed) return null;
  const report = await transport.getStats();
  let out = null;
  report.forEach((r) => {
    if (r.type === 'transport') {
      out = pick(r, ['dtlsState', 'iceState', 'bytesSent', 'bytesReceived', 'packetsSent', 'packetsReceived']);
      const pair = r.selectedCandidatePairId && report.get(r.selectedCandidatePairId);
      if (pair) {
        out.candidatePair = pick(pair, ['state', 'nominated', 'bytesSent', 'bytesReceived',
          'requestsSent', 'responsesReceived', 'consentRequestsSent']);
      }
    }
  });
  return out;
}

async function stats() {
  const out = { role: state.role, video: null, audio: null, transports: {}, element: null };
  if (state.role === 'viewer') {
    for (const consumer of consumers.values()) {
      if (consumer.closed) continue;
      const report = await consumer.getStats();
      report.forEach((r) => {
        if (r.type !== 'inbound-rtp') return;
        const codec = r.codecId && report.get(r.codecId);
        out[r.kind] = {
          consumerId: consumer.id,
          producerId: consumer.producerId,
          codec: codec ? codec.mimeType : null,
          ...pick(r, [
            'packetsReceived', 'bytesReceived', 'packetsLost', 'framesDecoded', 'keyFramesDecoded',
            'framesReceived', 'framesDropped', 'frameWidth', 'frameHeight', 'pliCount', 'nackCount',
            'firCount', 'totalSamplesReceived', 'jitter',
          ]),
        };
      });
    }
    const v = $('remote');
    out.element = {
      videoWidth: v.videoWidth,
      videoHeight: v.videoHeight,
      clientWidth: v.clientWidth,
      clientHeight: v.clientHeight,
      paused: v.paused,
      muted: v.muted,
      readyState: v.readyState,
      tracks: v.srcObject ? v.srcObject.getTracks().map((t) => ({ kind: t.kind, readyState: t.readyState, muted: t.muted })) : [],
    };
  } else if (state.role === 'host') {
    for (const producer of producers.values()) {
      if (producer.closed) continue;
      const report = await producer.getStats();
      report.forEach((r) => {
        if (r.type !== 'outbound-rtp') return;
        const codec = r.codecId && report.get(r.codecId);
        const entry = {
          producerId: producer.id,
          codec: codec ? codec.mimeType : null,
          ...pick(r, [
            'packetsSent', 'bytesSent', 'framesEncoded', 'keyFramesEncoded', 'frameWidth',
            'frameHeight', 'pliCount', 'nackCount', 'firCount', 'encoderImplementation',
            'qualityLimitationReason', 'retransmittedPacketsSent',
          ]),
        };
        // Several outbound-rtp (simulcast) for one kind: keep the first active one, and
        // list them all by rid.
        if (!out[r.kind]) out[r.kind] = entry;
        if (r.rid) {
          out.layers = out.layers || {};
          out.layers[r.rid] = { ...pick(r, ['frameWidth', 'frameHeight', 'packetsSent', 'bytesSent', 'framesEncoded']), active: r.active };
        }
      });
    }
  }
  out.transports.send = await transportStats(sendTransport);
  out.transports.recv = await transportStats(recvTransport);
  return out;
}

// Viewer: ask the server for at most this spatial (and, if given, temporal) layer of the
// video consumer.
async function setPreferredLayers(spatialLayer, temporalLayer) {
  const video = [...consumers.values()].find((c) => c.kind === 'video' && !c.closed);
  if (!video) throw new Error('no video consumer');
  const data = { roomId: state.roomId, consumerId: video.id, spatialLayer };
  if (temporalLayer !== undefined) data.temporalLayer = temporalLayer;
  return sig.request('setPreferredLayers', data);
}

// The server's view (getStats request) of one of our objects, e.g. {producerId}.
async function serverStats(query) {
  return sig.request('getStats', { roomId: state.roomId, ...query });
}

// Test hooks: an ICE restart of our transport of `direction` on demand (the ids of the
// transport, producers and consumers stay); a dropped WebSocket (closed as a network loss
// would: not by us, so the page resumes).
async function restartIceHook(direction) {
  const transport = direction === 'send' ? sendTransport : recvTransport;
  if (!transport) throw new Error(`no ${direction} transport`);
  const before = state.iceRestarts;
  await restartIce(transport);
  if (state.iceRestarts === before) throw new Error('the ICE restart did not happen');
  return transport.id;
}

function dropSignaling() {
  sig.ws.close(4000, 'test: connection dropped');
}

window.pysfu = { state, stats, setPreferredLayers, serverStats, restartIce: restartIceHook, dropSignaling,
  sendData };

// ---- entry -----------------------------------------------------------------------------------

function runLanding() {
  showView('landing');
  document.querySelector('.pills').hidden = true;
  $('create-room').addEventListener('click', () => {
    location.href = `/?room=${randomRoomId()}&role=host`;
  });
  $('join-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const room = $('join-room').value.trim();
    const name = $('join-name').value.trim();
    const query = new URLSearchParams({ room, role: 'viewer' });
    if (name) query.set('name', name);
    if (ROOM_RE.test(room)) location.href = `/?${query}`;
  });
}

async function main() {
  $('reconnect').addEventListener('click', () => location.reload());
  const params = new URLSearchParams(location.search);
  const roomId = params.get('room');
  const role = params.get('role') === 'host' ? 'host' : 'viewer';
  if (!roomId) {
    runLanding();
    return;
  }
  if (!ROOM_RE.test(roomId)) {
    showView('landing');
    showError('invalid room id: use 1–64 letters, digits, _ . : -');
    return;
  }
  state.role = role;
  state.roomId = roomId;
  state.simulcast = params.get('simulcast') === '1';
  const scalability = params.get('scalability');
  state.scalability = scalability && /^L[1-3]T[1-3](_KEY)?$/.test(scalability) ? scalability : null;
  document.title = `pysfu · ${role} · ${roomId}`;
  $('role-badge').textContent = role;
  $('role-badge').hidden = false;
  $('role-badge').dataset.role = role;
  $('room-label').textContent = `room ${roomId}`;
  try {
    if (role === 'host') await runHost(roomId);
    else await runViewer(roomId);
  } catch (err) {
    showError(err);
    if (err.code === 'unauthorized') {
      $('error').textContent += TOKEN
        ? ' — the token in this link is invalid or expired: ask for a new link.'
        : ' — this server requires a join token: open the link your app gave you (…&token=…).';
    } else if (role === 'host' && err.code === 'forbidden') {
      $('error').textContent += ' — this room already has a host (open a new room instead).';
    }
  }
}

main();
