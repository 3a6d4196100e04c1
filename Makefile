# The two commands of the README.  Both install what they need from requirements*.txt first, and
# both use this checkout's lidlib (PYTHONPATH), not an installed copy.
PYTHON ?= python3
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: book test check-book bench eval

book:            ## build the whole book, offline, executing every chapter (-W: warnings are errors)
	$(PYTHON) -m pip install -q -r requirements.txt
	bash scripts/build_book.sh

test:            ## run the test suite (library, oracles, widgets, exercise solutions)
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PYTHON) -m pytest -q

check-book:      ## load every built page in headless Chromium (needs: apt-get install chromium)
	$(PYTHON) scripts/check_book.py

bench:           ## speed benchmark: ratios to a plain gradient, measured in the same run
	$(PYTHON) scripts/benchmark.py --models vgg16 efficientnet --all --oracles

# the two halves of the methods run side by side (one process per core), each into its own CSV + .json;
# measured: about 12 CPU-seconds per image for the 14 methods, so ~22 min on two free cores for the 210 images
EVAL = OMP_NUM_THREADS=1 nice -n 10 $(PYTHON) -m lidlib.experiment probability-change class-discrimination \
	--eval-set --size 192 --n-steps 10 --seed 0 --figure none --no-progress --threads 1
eval:            ## the full evaluation of Ch. 12 (resumes): book/results/eval-{a,b}.csv + .json (configurations)
	$(EVAL) --out book/results/eval-a.csv --methods GradCAM LayerCAM IG LRP-0 SG-LRP-0 SG-LRP-ZP ST-LRP-0 & \
	$(EVAL) --out book/results/eval-b.csv --methods SIG-LRP-0 DeepLIFT LID-Taylor ST-LID-Taylor SIG-LID-Taylor \
	    LID-IG SIG-LID-IG & \
	$(EVAL) --out book/results/eps.csv --limit 30 --methods $(EPS_METHODS) & \
	wait
# the ε study of Ch. 12: SG-LRP-0 and SG-LRP-ZP at ε = 0 (exact) … 1 on the first 30 images (every pair, "halves")
EPS_METHODS = $(foreach m,SG-LRP-0 SG-LRP-ZP,$(foreach e,0 1e-06 0.001 0.01 0.1 1,"$(m) (ε=$(e))"))
