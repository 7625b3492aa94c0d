// Chat panel on data channels (mediasoup-client produceData / consumeData over pysfu's SCTP).
//
// Every page consumes every chat data producer of the room on its recv transport; the host
// (and viewers, when the server allows viewer_data_channels) produces one on a send
// transport. A message is shown with its sender's display name as the server gives it for the
// data producer (newDataProducer / dataConsumed: the join token's name claim, or the join's
// displayName in open rooms, else the peer id), never a name written into the message.
// No history: a page that (re)joins sees the messages sent from then on.

const MAX_KEPT = 5000; // messages kept in state.chat.messages
const MAX_SHOWN = 200; // messages kept in the DOM
const MAX_TEXT = 2000; // characters of one typed message

// FNV-1a 32-bit of bytes (tests compare a binary message's hash with what was sent).
export function fnv1a(bytes) {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i];
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

export class Chat {
  constructor({ state, sig, $, log, getRecvTransport, createSendTransport }) {
    this.state = state;
    this.sig = sig;
    this.$ = $;
    this.log = log;
    this.getRecvTransport = getRecvTransport;
    this.createSendTransport = createSendTransport;
    this.producer = null; // our mediasoup DataProducer
    this.consumers = new Map(); // dataProducerId -> DataConsumer
    this.names = new Map(); // dataProducerId -> { peerId, displayName }
    this.chain = Promise.resolve();
    state.chat = { canSend: false, open: false, ready: false, openConsumers: 0, note: '', producerId: null, messages: [], consumers: 0 };
  }

  // Show the panel; produce when allowed; consume what is already there.
  async start({ sendTransport }) {
    const { $ } = this;
    $('chat').hidden = false;
    $('chat-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const text = $('chat-input').value.trim().slice(0, MAX_TEXT);
      if (!text) return;
      $('chat-input').value = '';
      this.send(text);
    });
    try {
      const transport = sendTransport || (await this.createSendTransport());
      this.producer = await transport.produceData({ ordered: true, label: 'chat', protocol: 'text' });
      this.state.chat.producerId = this.producer.id;
      this.state.chat.canSend = true;
      const opened = () => {
        this.state.chat.open = true;
      };
      if (this.producer.readyState === 'open') opened();
      else this.producer.on('open', opened);
      this.producer.on('transportclose', () => this.readOnly('the connection closed'));
      this.log(`chat: producing data ${this.producer.id}`);
    } catch (err) {
      this.readOnly(err.code === 'forbidden' ? 'viewers cannot write in this room' : err.message);
    }
    $('chat-input').disabled = !this.state.chat.canSend;
    $('chat-send').disabled = !this.state.chat.canSend;
    const { dataProducers } = await this.sig.request('getDataProducers', { roomId: this.state.roomId });
    for (const p of dataProducers) this.enqueue(p.id, p.peerId, p.displayName);
    await this.chain;
    this.state.chat.ready = true;
  }

  readOnly(why) {
    this.state.chat.canSend = false;
    this.state.chat.note = why;
    this.$('chat-note').textContent = `Read only: ${why}.`;
    this.$('chat-input').disabled = true;
    this.$('chat-send').disabled = true;
  }

  // Our own message: sent, and shown here (the server does not echo it back).
  send(message) {
    if (!this.producer || this.producer.readyState !== 'open') return false;
    this.producer.send(message);
    this.add({ peerId: this.state.peerId, displayName: this.state.displayName }, message, true);
    return true;
  }

  onNotification(event, data) {
    if (event === 'newDataProducer') this.enqueue(data.dataProducerId, data.peerId, data.displayName);
    else if (event === 'dataProducerClosed') this.drop(data.dataProducerId);
    else if (event === 'dataProducerLimited') {
      this.$('chat-note').textContent = `Slow down: some messages were dropped (${data.reason}).`;
    }
  }

  enqueue(dataProducerId, peerId, displayName) {
    if (this.consumers.has(dataProducerId) || dataProducerId === this.state.chat.producerId) return;
    this.names.set(dataProducerId, { peerId, displayName });
    this.consumers.set(dataProducerId, null); // reserved while it is set up
    this.chain = this.chain.then(() => this.consume(dataProducerId)).catch((err) => {
      this.consumers.delete(dataProducerId);
      this.log(`chat: consumeData failed: ${err.message}`, 'error');
    });
  }

  async consume(dataProducerId) {
    const transport = await this.getRecvTransport();
    const d = await this.sig.request('consumeData', {
      roomId: this.state.roomId,
      transportId: transport.id,
      dataProducerId,
    });
    const consumer = await transport.consumeData({
      id: d.id,
      dataProducerId: d.dataProducerId,
      sctpStreamParameters: d.sctpStreamParameters,
      label: d.label,
      protocol: d.protocol,
    });
    const known = this.names.get(dataProducerId) || {};
    const peerId = d.peerId || known.peerId || '?';
    const from = { peerId, displayName: d.displayName || known.displayName || peerId };
    consumer.binaryType = 'arraybuffer';
    consumer.on('message', (message) => this.add(from, message, false));
    consumer.on('transportclose', () => this.drop(dataProducerId));
    if (!this.consumers.has(dataProducerId)) {
      consumer.close(); // closed while we were setting it up
      return;
    }
    this.consumers.set(dataProducerId, consumer);
    this.state.chat.consumers = [...this.consumers.values()].filter(Boolean).length;
    // Open once the SCTP association is up (messages sent to it before are not kept).
    const opened = () => {
      this.state.chat.openConsumers += 1;
    };
    if (consumer.readyState === 'open') opened();
    else consumer.on('open', opened);
    this.log(`chat: consuming ${d.label} of ${from} on stream ${d.sctpStreamParameters.streamId}`);
  }

  drop(dataProducerId) {
    const consumer = this.consumers.get(dataProducerId);
    this.consumers.delete(dataProducerId);
    if (consumer && !consumer.closed) consumer.close();
    this.state.chat.consumers = [...this.consumers.values()].filter(Boolean).length;
  }

  // `sender`: { peerId, displayName }; entries keep both (`from` is the peer id).
  add(sender, message, mine) {
    const from = sender.peerId;
    const name = sender.displayName || from;
    const entry = { from, name, mine, t: Date.now() };
    if (typeof message === 'string') entry.text = message;
    else {
      const bytes = new Uint8Array(message);
      entry.binary = bytes.length;
      entry.hash = fnv1a(bytes);
    }
    const kept = this.state.chat.messages;
    kept.push(entry);
    if (kept.length > MAX_KEPT) kept.splice(0, kept.length - MAX_KEPT);
    const li = document.createElement('li');
    if (mine) li.className = 'mine';
    const who = document.createElement('b');
    who.textContent = mine ? `${name} (you)` : name;
    li.append(who, ' ', entry.text !== undefined ? entry.text : `[${entry.binary} bytes]`);
    const list = this.$('chat-log');
    list.append(li);
    while (list.children.length > MAX_SHOWN) list.firstElementChild.remove();
    list.scrollTop = list.scrollHeight;
  }
}
