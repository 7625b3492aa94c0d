"""Signaling: JSON over WebSocket, mediasoup-app workflow with the seed's event names."""
