"""Adapters to other frameworks, each behind its own extra: ``langchain`` (LangChain chat
model and LLM) and ``ray`` (OpenAI routes as Ray Serve replicas); from a checkout of
guanaco_rt, ``pip install '.[langchain]'`` or ``pip install '.[ray]'``. Importing this
package imports neither framework."""


def missing_extra(module, extra, err):
    """The ModuleNotFoundError to raise when ``module`` cannot import what ``extra`` installs."""
    return ModuleNotFoundError(f"{module} needs the {extra!r} extra of guanaco_rt ({err.name} is not installed): "
                               f"pip install 'guanaco_rt[{extra}]', or from a checkout of guanaco_rt: "
                               f"pip install '.[{extra}]'", name=err.name)
