"""The network layer: content seeding, discovery, jobs and credits. Never imports ``game``."""
