"""The parts one conversation is made of, composed by `relay.nursery.run_conversation`: `record` (what happened, as
data), `endings` (how it ends and tells the browser), `outbox` (the one queue to the browser), `speech` (the one
caller of the avatar session) and `pumps` (browser -> agent, agent -> browser and avatar).
Import the module you need: this package loads none of them (so the ops, which read `record`, load no engine)."""
