"""The hf-crystal Space: the app of `hf-crystal app` (hf_crystal.app) over the embedded default model, offline."""

from hf_crystal.app import build_app

demo = build_app()

if __name__ == "__main__":
    demo.launch(ssr_mode=False)
