"""``add_sissi_config``: the ``cfg.SISSI`` node, in the style of Detectron2 projects."""
from detectron2.config import CfgNode as CN

__all__ = ["add_sissi_config", "BLUR_PRESETS"]

# (kernel size, sigma) of the background blur of synthetic-like images. The paper names
# "(21, 21) weak" and "(12, 32) strong", which cannot both be (kernel, sigma) pairs; the
# authors' code uses kernel 71 / sigma 30 as strong. Weak keeps a 21 px kernel.
BLUR_PRESETS = {"weak": (21, 7.0), "strong": (71, 30.0)}


def add_sissi_config(cfg):
    """Add the SISSI options to a Detectron2 config (in place) and return it."""
    _C = cfg
    _C.SISSI = CN()
    # Labelled source domain, weakly labelled target domain (training), and the labelled
    # source validation set whose loss is the only model-selection signal (paper sec. 4.1).
    _C.SISSI.SOURCE_DATASETS = ()
    _C.SISSI.TARGET_DATASETS = ()
    _C.SISSI.SOURCE_VAL_DATASETS = ()
    # Data sets to register before training, "NAME=KIND:PATH" with KIND cellpose, coco,
    # celllab or images, e.g. ("mylab_weak=coco:/data/lab/weak.json",).
    _C.SISSI.REGISTER = ()
    # Images per iteration from each domain, summed over all processes ("balanced gradient
    # contribution": n source + n target in one forward pass).
    _C.SISSI.IMS_PER_BATCH_SOURCE = 4
    _C.SISSI.IMS_PER_BATCH_TARGET = 4
    # Training length in epochs; one epoch is one pass over the target training set.
    # SOLVER.MAX_ITER is derived from it (and SOLVER.STEPS may be given as epoch fractions).
    _C.SISSI.EPOCHS = 30
    # Each target image is drawn this many times per epoch (with INPUT.CROP, a different part
    # each time), so that an epoch holds enough iterations to outweigh the per-epoch checks
    # (memorisation AP50, pseudo-labelling) when crops make iterations cheap. 1 = the paper.
    _C.SISSI.TARGET_REPEATS = 1
    # Save a checkpoint every N epochs (the last one is always kept for --resume).
    _C.SISSI.CHECKPOINT_EVERY_EPOCHS = 1

    # ---- disk use of long runs (docs/disk.md) ----
    _C.SISSI.DISK = CN()
    # Per-epoch checkpoints (model_NNNNNNN.pth, ~110 MB each for the lean CPU model) a row keeps:
    # the newest K; 0 = all. model_final.pth, sissi/best_source_val.pth and the trunk checkpoints
    # that rows still branch from are always kept; older ones go only once a newer one is on disk.
    _C.SISSI.DISK.KEEP_LAST = 1
    # At start, estimate what the run (or all rows of run_rows) writes and refuse to start when it
    # does not fit the free space of the output folder's disk.
    _C.SISSI.DISK.CHECK = True
    # Free space (MB) the check leaves for everything else on the machine.
    _C.SISSI.DISK.RESERVE_MB = 1024

    # ---- data mappers (registry SISSI_MAPPER_REGISTRY) ----
    _C.SISSI.MAPPER = CN()
    _C.SISSI.MAPPER.SOURCE = "SISSISourceMapper"
    _C.SISSI.MAPPER.TARGET = "SISSITargetMapper"

    # ---- the paper's augmentations, as Detectron2 augmentations ----
    _C.SISSI.AUG = CN()
    _C.SISSI.AUG.HFLIP_PROB = 0.5
    _C.SISSI.AUG.VFLIP_PROB = 0.5
    # shift-scale-rotate: probability, max shift (fraction of size), max scale change, max degrees
    _C.SISSI.AUG.SSR_PROB = 0.5
    _C.SISSI.AUG.SSR_SHIFT = 0.0625
    _C.SISSI.AUG.SSR_SCALE = 0.1
    _C.SISSI.AUG.SSR_ROTATE = 45.0
    _C.SISSI.AUG.BLUR_PROB = 0.2
    _C.SISSI.AUG.BLUR_MAX_KSIZE = 7
    # channel shuffle only changes colour input; grayscale replicated to 3 channels is unaffected
    _C.SISSI.AUG.CHANNEL_SHUFFLE_PROB = 0.2

    # ---- synthetic-like images by seamless cloning ----
    _C.SISSI.CLONING = CN()
    # "on_correction": from the first pseudo-label epoch on (the paper's A+SISSI and SISSI rows);
    # "never": plain self-training (Baseline, Plain A); "always": from the first epoch.
    _C.SISSI.CLONING.MODE = "never"
    # "weak" | "strong" | "custom" (then KERNEL_SIZE and SIGMA are used)
    _C.SISSI.CLONING.BLUR = "strong"
    _C.SISSI.CLONING.KERNEL_SIZE = 71
    _C.SISSI.CLONING.SIGMA = 30.0
    # The synthetic-like image depends only on the image and its boxes, which are fixed within an
    # epoch, while SISSI.TARGET_REPEATS draws each image several times: the target mapper clones
    # an image once per epoch and keeps the result (least recently used out first) in at most
    # this many MiB per loader process. 0 clones at every draw. The images are bitwise the same.
    _C.SISSI.CLONING.CACHE_MB = 512

    # ---- when label correction starts (registry SISSI_START_RULE_REGISTRY) ----
    # "adele" | "source_val_loss" | "epoch:N" | "never"
    _C.SISSI.START_RULE = "adele"
    _C.SISSI.ADELE = CN()
    _C.SISSI.ADELE.THRESHOLD = 0.9  # relative drop of the AP50 slope that marks memorisation
    # ADELE's n_epoch: the horizon over which the deceleration is counted; 0 = SISSI.EPOCHS
    _C.SISSI.ADELE.HORIZON = 0
    _C.SISSI.ADELE.MIN_POINTS = 4  # AP50 values needed before a fit is trusted
    # Run the memorisation check (and write memorisation.json) whatever the start rule.
    _C.SISSI.ADELE.TRACK = False
    # Beyond the paper: "running_max" fits the running maximum of the AP50 curve, so a single
    # noisy dip of a weak CPU detector cannot fire the rule ("raw" = the paper).
    _C.SISSI.ADELE.CURVE = "raw"
    _C.SISSI.SOURCE_VAL = CN()
    # epochs without a new lowest source validation loss before correction starts from the
    # best checkpoint (the paper's Baseline)
    _C.SISSI.SOURCE_VAL.PATIENCE = 3
    _C.SISSI.SOURCE_VAL.MAX_IMAGES = 0  # 0 = the whole validation set

    # ---- pseudo-labels: test-time augmentation + weighted boxes fusion ----
    _C.SISSI.PSEUDO = CN()
    _C.SISSI.PSEUDO.SCALES = (0.8, 0.9, 1.0, 1.1, 1.2)
    _C.SISSI.PSEUDO.FLIPS = ("none", "h", "v", "hv")
    _C.SISSI.PSEUDO.MIN_VIEW_SCORE = 0.01  # a view's boxes at or below this are dropped
    _C.SISSI.PSEUDO.WBF_IOU_THR = 0.5
    _C.SISSI.PSEUDO.WBF_SKIP_BOX_THR = 0.25
    _C.SISSI.PSEUDO.WBF_CONF_TYPE = "avg"
    _C.SISSI.PSEUDO.SCORE_THRESH = 0.25  # fused score needed to become a label
    _C.SISSI.PSEUDO.NMS_THRESH = 0.2
    _C.SISSI.PSEUDO.TOPK = 200
    _C.SISSI.PSEUDO.BATCH_SIZE = 4  # views per forward pass
    # Deviation from the paper (0 = the paper): the image's INITIAL weak labels vote in the
    # fusion as one more view of this weight (score 1), so a pseudo-label must agree with the
    # image evidence of the weak labels or with confident model votes; a brake on the
    # self-training runaway measured in docs/experiments.md. See algorithms.wbf.fuse_views.
    _C.SISSI.PSEUDO.WEAK_LABEL_WEIGHT = 0.0
    # Deviation from the paper ("student" = the paper: the model being trained labels the next
    # epoch): "ema" labels with a slowly moving teacher, an exponential moving average of the
    # student's weights started when correction starts (algorithms/ema.py); EMA_MOMENTUM per
    # iteration (0.99: the teacher averages the students of the last ~100 iterations).
    _C.SISSI.PSEUDO.TEACHER = "student"
    _C.SISSI.PSEUDO.EMA_MOMENTUM = 0.99
    # Deviation from the paper (0 = the paper: new pseudo-labels every epoch once correction
    # starts): relabel at the first ROUNDS correction epochs only, then keep the last labels
    # (and keep cloning from them) to the end. A brake measured in docs/experiments.md: the
    # first round is the only one that beats the weak labels on the real data.
    _C.SISSI.PSEUDO.ROUNDS = 0
    # Folder where a row's FIRST pseudo-labels are stored under a hash of the labeller's weights
    # and of every setting that reaches a box, and read back by any row that would make the
    # same ones ("" = off). Rows branching from one trunk checkpoint share them (run_rows sets it
    # for its branches); the labels are the ones the row would have made (engine/label_cache.py).
    _C.SISSI.PSEUDO.CACHE_DIR = ""

    # ---- evaluation ----
    _C.SISSI.EVAL = CN()
    _C.SISSI.EVAL.MAX_DETS = 400  # COCO maxDets for AP/AR (cells are many per image)
    # Extra annotation sets for the test images (several readers): list of COCO json paths;
    # --eval-only prints one row per reader plus their mean.
    _C.SISSI.EVAL.READERS = ()

    # ---- cut-paste synthetic target images (docs/points.md; algorithms/cut_paste.py) ----
    # Beyond the paper (off = the paper): a target draw becomes, with probability
    # 1 - REAL_FRACTION, an image made of labelled cells pasted on a canvas, each with its exact
    # box (Kushwaha et al., CVPRW 2020). Patches are cut from the current target labels (weak
    # labels, boxes from clicks, then the pseudo-labels of the epoch) and/or the source labels.
    _C.SISSI.SYNTH = CN()
    _C.SISSI.SYNTH.ENABLED = False
    # Share of target draws that stay real images (the paper mixes in about 10 %); 0 = only
    # synthetic images in the target half of the batch.
    _C.SISSI.SYNTH.REAL_FRACTION = 0.1
    _C.SISSI.SYNTH.PATCHES_FROM = ("target",)  # "target" and / or "source"
    # "blur": the drawn real target image blurred as SISSI's cloning background (SISSI.CLONING.BLUR)
    # keeps its illumination, and its unlabelled cells fade; "median": a median filter 2.5 cells
    # wide (MEDIAN_KSIZE, 0 = from the patches' median size); "blank": one grey level (the paper).
    _C.SISSI.SYNTH.CANVAS = "blur"
    _C.SISSI.SYNTH.MEDIAN_KSIZE = 0
    _C.SISSI.SYNTH.COUNT = (10, 50)  # cells pasted per image, uniform in [min, max]
    # Artefact patches (clicks of the classes data.points.NEGATIVE_CLASSES) pasted without a box.
    _C.SISSI.SYNTH.NEGATIVES = (0, 0)
    _C.SISSI.SYNTH.MAX_OVERLAP = 0.1  # largest share of a patch another pasted patch may cover
    _C.SISSI.SYNTH.SIZE_JITTER = 0.1  # crop = box x uniform(1 - j, 1 + j): the paper's 0-10 %
    # Flips and rotations by multiples of 90 degrees keep every box exact; other angles would
    # inflate them (the extent of a rotated rectangle), so none are offered.
    _C.SISSI.SYNTH.FLIP = True
    _C.SISSI.SYNTH.ROTATE90 = True
    _C.SISSI.SYNTH.BLEND = "feather"  # "feather" | "hard" | "seamless" (Poisson cloning, ~0.6 s per 1 MP image)
    _C.SISSI.SYNTH.FEATHER = 3  # px of the soft patch edge
    # Patches kept per epoch (cut from whole images, chosen by seed and epoch, until this many).
    _C.SISSI.SYNTH.MAX_PATCHES = 4000

    # ---- the masked-image pretext (MODEL.META_ARCHITECTURE "MaskedImagePretext",
    # sissi_d2/modeling/masked_pretext.py): a self-supervised stage, not a detector ----
    _C.MODEL.MASKED_PRETEXT = CN()
    # The backbone level the decoder paints from; "" = the finest one (smallest stride).
    _C.MODEL.MASKED_PRETEXT.IN_FEATURE = ""
    # Side of the hidden squares in input pixels; about a cell wide at the CPU recipe's 512 px
    # (the Usiigaci cells are ~35 px there), so that painting one back means knowing cells.
    _C.MODEL.MASKED_PRETEXT.PATCH_SIZE = 32
    # Share of the squares hidden in each image (SparK's and MAE's CNN-friendly 0.6 / 0.75).
    _C.MODEL.MASKED_PRETEXT.MASK_RATIO = 0.6

    # ---- heads for labels that miss objects (MODEL.PROPOSAL_GENERATOR.NAME "MissingLabelRPN",
    # MODEL.ROI_HEADS.NAME "MissingLabelROIHeads"; sissi_d2/modeling/missing_label_heads.py; not
    # in the paper). Read only by those heads. ----
    _C.MODEL.MISSING_LABELS = CN()
    # A sampled negative the model already scores as a cell at >= this is left out of the loss...
    # (above 0.5: a fresh head scores every sample near 0.5, and must first learn the background)
    _C.MODEL.MISSING_LABELS.MIN_SCORE = 0.7
    # ...when it overlaps no label (IoU below this with the label it was matched to): where a cell
    # could be that nobody boxed. Shifted boxes of labelled cells keep their loss.
    _C.MODEL.MISSING_LABELS.MAX_IOU = 0.1
    # The confidence rule above can be switched off, leaving only the crowd rule below.
    _C.MODEL.MISSING_LABELS.SKIP_CONFIDENT = True
    # Labels with COCO's "iscrowd": 1 become regions that are neither cells nor background: the
    # mappers keep them (field gt_ignore) and the heads leave out of the loss the sampled negatives
    # that overlap one as much as a positive would overlap its label (RPN: IoU >= its background
    # threshold, 0.3; RoI head: IoU >= 0.5). Off: crowd labels are dropped, as in Detectron2.
    _C.MODEL.MISSING_LABELS.IGNORE_CROWD = False
    return cfg
