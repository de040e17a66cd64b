# Two commands on a fresh machine (Python 3.10+ with venv):
#   make demo   set up .venv, then run notebook 01 on the CPU on real MNIST digits
#   make test   set up .venv, then run the unit tests and every notebook in smoke mode
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast student gpu-check benchmarks clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt -e .
	touch $@

demo: setup
	mkdir -p outputs
	cd notebooks && ../$(BIN)/papermill 01_mnist_ddpm.ipynb ../outputs/01_mnist_ddpm.cpu.ipynb -k python3 -p preset cpu
	@echo "Hand-in files: outputs/mnist/result_mnist.jpg, outputs/mnist/loss_mnist.jpg, outputs/mnist/mnist.gif"
	@echo "The executed notebook, with every figure: outputs/01_mnist_ddpm.cpu.ipynb"

# One thread per process: the suite's tiny models gain nothing from a second thread, and on a
# shared 2-core machine two threads fighting a neighbour make small ops many times slower.
# Colab ships ipywidgets 7.7.1, the venv has 8: the widget tests run once more with 7.7.1 on top.
WIDGETS7 := $(VENV)/widgets7
$(WIDGETS7)/.installed: $(VENV)/.installed
	$(BIN)/python -m pip install -q --no-deps --target $(WIDGETS7) "ipywidgets==7.7.1" "widgetsnbextension~=3.6.0" \
		"jupyterlab_widgets<3" ipython_genutils
	touch $@

test: setup $(WIDGETS7)/.installed
	DDPM_SMOKE=1 OMP_NUM_THREADS=1 $(BIN)/pytest
	DDPM_SMOKE=1 OMP_NUM_THREADS=1 DDPM_EXPECT_IPYWIDGETS=7.7.1 PYTHONPATH=$(WIDGETS7) $(BIN)/pytest tests/test_widgets.py

# The edit loop: unit tests only, no notebook runs (tests marked `notebook` and nbval over notebooks/ left out).
test-fast: setup
	DDPM_SMOKE=1 OMP_NUM_THREADS=1 $(BIN)/pytest tests -m "not notebook" -q

# On a machine with a CUDA GPU: benchmarks and the smoke suite on the GPU → benchmarks/results/gpu_check.md.
# Any Python that has requirements-dev.txt works offline: make gpu-check PYTHON=python3
PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py

# The student edition: notebooks/student/, each solution region replaced by a stub that says what to write.
student: setup
	$(BIN)/python scripts/student_edition.py

benchmarks: setup
	$(BIN)/python benchmarks/mnist_speed.py
	$(BIN)/python benchmarks/cpu_threads.py
	$(BIN)/python benchmarks/mnist_learnability.py

clean:
	rm -rf .smoke outputs/01_mnist_ddpm.cpu.ipynb
