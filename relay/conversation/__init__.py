"""The parts one conversation is made of, composed by `relay.nursery.run_conversation`: `record` (what happened, as
data), `endings` (how it ends and tells the browser), `outbox` (the one queue to the browser), `speech` (the one
caller of the avatar session) and `pumps` (browser -> agent, agent -> browser and avatar)."""

from relay.conversation.endings import BrowserSocket, ConversationOver, classify, tell_browser_and_close
from relay.conversation.outbox import Outbox
from relay.conversation.pumps import FloodGate, pump_agent_to_browser, pump_browser_to_agent
from relay.conversation.record import ConversationRecord, Traffic, current_conversation
from relay.conversation.speech import SpeechRouter

__all__ = ["BrowserSocket", "ConversationOver", "ConversationRecord", "FloodGate", "Outbox", "SpeechRouter",
           "Traffic", "classify", "current_conversation", "pump_agent_to_browser", "pump_browser_to_agent",
           "tell_browser_and_close"]
