# Two commands on a fresh machine (Python 3.10+ with venv):
#   make demo   set up .venv, then run notebook 01 on the CPU on real MNIST digits
#   make test   set up .venv, then run the unit tests and every notebook in smoke mode
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test benchmarks clean

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
test: setup
	DDPM_SMOKE=1 OMP_NUM_THREADS=1 $(BIN)/pytest

benchmarks: setup
	$(BIN)/python benchmarks/mnist_speed.py
	$(BIN)/python benchmarks/mnist_learnability.py

clean:
	rm -rf .smoke outputs/01_mnist_ddpm.cpu.ipynb
