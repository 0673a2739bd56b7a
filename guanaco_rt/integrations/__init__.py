"""Adapters to other frameworks, each behind its own extra: ``langchain`` (LangChain chat
model and LLM, ``pip install 'guanaco_rt[langchain]'``) and ``ray_serve`` (OpenAI routes as
Ray Serve replicas, ``pip install 'guanaco_rt[ray]'``). Importing this package imports
neither framework."""
