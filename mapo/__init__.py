"""mapo: Multimodal Agentic Policy Optimization for VLMs that think with images."""

__version__ = "0.1.0"
