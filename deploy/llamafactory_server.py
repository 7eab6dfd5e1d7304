"""One deployment's server: LLaMA Factory's OpenAI-compatible API app, without its CORS "*".

Run by a deployment's monitor as `python deploy/llamafactory_server.py server_config.yaml`, with
API_HOST, API_PORT, API_KEY and API_MODEL_NAME in its environment (LLaMA Factory's own variables).
`llamafactory-cli api` would listen where API_HOST says too, but answer every origin's browser
with `Access-Control-Allow-Origin: *` and credentials; here no cross-origin page may read it (the
key is a bearer token: clients are programs, not pages). The heavy imports happen here, in the
server's process; it stands outside the imts_flask package so that nothing the API workers import
can pull LLaMA Factory (or torch) in.
"""

import os
import sys

import yaml


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python deploy/llamafactory_server.py SERVER_CONFIG.yaml", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    import uvicorn
    from fastapi.middleware.cors import CORSMiddleware
    from llamafactory.api.app import create_app
    from llamafactory.chat import ChatModel

    app = create_app(ChatModel(config))
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    uvicorn.run(app, host=os.environ["API_HOST"], port=int(os.environ["API_PORT"]), log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
