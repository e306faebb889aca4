"""toysim: an exact simulator for the theory of why RLHF safety alignment is shallow.

Quantities are exact (enumeration of the prefix tree), so enable float64 before using them::

    import jax
    jax.config.update("jax_enable_x64", True)

See docs/theory.md for the mathematics and the README for the command line.
"""

from . import teaching as teaching
from ._analysis import Analysis as Analysis
from ._analysis import analyze as analyze
from ._compare import METHODS as METHODS
from ._compare import Comparison as Comparison
from ._compare import MethodOutcome as MethodOutcome
from ._compare import MethodSettings as MethodSettings
from ._compare import attack_depth as attack_depth
from ._compare import compare_methods as compare_methods
from ._compare import frontier_kl as frontier_kl
from ._dp import ProductEngine as ProductEngine
from ._dp import automaton_arrays as automaton_arrays
from ._dp import dp_analyze as dp_analyze
from ._dp import dp_martingale as dp_martingale
from ._dp import dp_tilted_chain as dp_tilted_chain
from ._dp_recovery import DPAttack as DPAttack
from ._dp_recovery import DPDeep as DPDeep
from ._dp_recovery import DPRecoveryGradients as DPRecoveryGradients
from ._dp_recovery import dp_deep_arrays as dp_deep_arrays
from ._enumerate import Levels as Levels
from ._enumerate import backward as backward
from ._enumerate import forward as forward
from ._enumerate import levels_from_log_cond as levels_from_log_cond
from ._enumerate import log_backward as log_backward
from ._enumerate import shard_prefixes as shard_prefixes
from ._equilibrium import Equilibrium as Equilibrium
from ._equilibrium import log_partition as log_partition
from ._equilibrium import reweight as reweight
from ._equilibrium import second_order_ratio as second_order_ratio
from ._equilibrium import tilt as tilt
from ._equilibrium import tilt_kl_by_position as tilt_kl_by_position
from ._gradient import autodiff_gradient as autodiff_gradient
from ._gradient import covariance_gradient as covariance_gradient
from ._gradient import covariance_weights as covariance_weights
from ._gradient import expected_harm as expected_harm
from ._gradient import fisher_bound as fisher_bound
from ._gradient import prefix_covariance_sq_norm as prefix_covariance_sq_norm
from ._gradient import tree_sq_norm as tree_sq_norm
from ._gradient import untied_autodiff_gradient as untied_autodiff_gradient
from ._gradient import untied_copies_gradient as untied_copies_gradient
from ._harms import AutomatonHarm as AutomatonHarm
from ._harms import TableHarm as TableHarm
from ._harms import automaton_harm as automaton_harm
from ._harms import deadline_harm as deadline_harm
from ._harms import first_decisive_harm as first_decisive_harm
from ._harms import graded_harm as graded_harm
from ._harms import harm_values as harm_values
from ._harms import prune_unreachable as prune_unreachable
from ._harms import table_harm as table_harm
from ._harms import trigger_harm as trigger_harm
from ._harms import unreachable_states as unreachable_states
from ._horizon import determined as determined
from ._horizon import determined_masks as determined_masks
from ._horizon import horizon_distribution as horizon_distribution
from ._horizon import sequence_horizon as sequence_horizon
from ._horizon import uniform_horizon as uniform_horizon
from ._instance import Instance as Instance
from ._instance import dumps as dump_instance
from ._instance import load as load_instance
from ._instance import loads as loads_instance
from ._martingale import MartingaleSummary as MartingaleSummary
from ._martingale import harm_information as harm_information
from ._martingale import harm_martingale as harm_martingale
from ._martingale import harm_variance as harm_variance
from ._martingale import innovations as innovations
from ._martingale import martingale_summary as martingale_summary
from ._memory import check_fits as check_fits
from ._memory import dp_check_fits as dp_check_fits
from ._memory import dp_estimate_bytes as dp_estimate_bytes
from ._memory import estimate_bytes as estimate_bytes
from ._methods import Reweighted as Reweighted
from ._methods import best_of_n_kl as best_of_n_kl
from ._methods import best_of_n_kl_bound as best_of_n_kl_bound
from ._methods import best_of_n_log_weights as best_of_n_log_weights
from ._methods import dpo_log_weights as dpo_log_weights
from ._methods import harm_levels as harm_levels
from ._methods import ipo_log_weights as ipo_log_weights
from ._methods import rejection_log_weights as rejection_log_weights
from ._methods import reweighted_levels as reweighted_levels
from ._methods import reweighting as reweighting
from ._methods import tilt_log_weights as tilt_log_weights
from ._methods import token_wise_optimum as token_wise_optimum
from ._objectives import alignment_loss as alignment_loss
from ._objectives import augmentation_loss as augmentation_loss
from ._objectives import deep_objective as deep_objective
from ._objectives import dpo_loss as dpo_loss
from ._objectives import gradient_by_position as deep_gradient_by_position
from ._objectives import ipo_loss as ipo_loss
from ._objectives import kl_by_position as kl_by_position
from ._objectives import per_token_penalty_gap as per_token_penalty_gap
from ._objectives import recovery_objective as recovery_objective
from ._objectives import separable_objective as separable_objective
from ._objectives import sequence_kl as sequence_kl
from ._objectives import sft_loss as sft_loss
from ._objectives import standard_loss as standard_loss
from ._objectives import token_wise_loss as token_wise_loss
from ._optimize import Certificate as Certificate
from ._optimize import Objective as Objective
from ._optimize import OptimizeResult as OptimizeResult
from ._optimize import certify as certify
from ._optimize import certify_values as certify_values
from ._optimize import minimize as minimize
from ._policies import MarkovParams as MarkovParams
from ._policies import MarkovPolicy as MarkovPolicy
from ._policies import MLPParams as MLPParams
from ._policies import MLPPolicy as MLPPolicy
from ._policies import TabularPolicy as TabularPolicy
from ._policies import prefix_digits as prefix_digits
from ._recovery import RecoverySpec as RecoverySpec
from ._recovery import attack_curves as attack_curves
from ._recovery import attack_length as attack_length
from ._recovery import attack_success as attack_success
from ._recovery import augmentation_samples as augmentation_samples
from ._recovery import augmentation_variance as augmentation_variance
from ._recovery import gibbs_gap as gibbs_gap
from ._recovery import gibbs_policy as gibbs_policy
from ._recovery import gibbs_recovery as gibbs_recovery
from ._recovery import guaranteed_recovery as guaranteed_recovery
from ._recovery import harmful_log_marginals as harmful_log_marginals
from ._recovery import harmful_prefix_marginals as harmful_prefix_marginals
from ._recovery import log_no_recovery as log_no_recovery
from ._recovery import log_recovery_probability as log_recovery_probability
from ._recovery import logit_recovery as logit_recovery
from ._recovery import min_log_recovery as min_log_recovery
from ._recovery import min_recovery_probability as min_recovery_probability
from ._recovery import policy_prefix_marginals as policy_prefix_marginals
from ._recovery import recovery_gradient as recovery_gradient
from ._recovery import recovery_mask as recovery_mask
from ._recovery import recovery_penalty as recovery_penalty
from ._recovery import recovery_spec as recovery_spec
from ._recovery import robustness_bound as robustness_bound
from ._recovery import sequence_prefix_marginals as sequence_prefix_marginals
from ._recovery import standard_optimum as standard_optimum
from ._reports import deep_report as deep_report
from ._reports import dp_deep_report as dp_deep_report
from ._reports import exact_report as exact_report
from ._reports import training_report as training_report
from ._sampling import exact_gradients as exact_gradients
from ._sampling import reinforce_gradients as reinforce_gradients
from ._sampling import sample_sequences as sample_sequences
from ._sampling import sampling_versus_exact as sampling_versus_exact
from ._sweep import SweepResult as SweepResult
from ._sweep import SweepSpec as SweepSpec
from ._sweep import load_sweep_spec as load_sweep_spec
from ._sweep import merge_sweep_parts as merge_sweep_parts
from ._sweep import sweep as sweep
from ._sweep import sweep_plot as sweep_plot
from ._sweep import sweep_replay as sweep_replay
from ._training import TrainingResult as TrainingResult
from ._training import policy_log_probs as policy_log_probs
from ._training import spillover_by_position as spillover_by_position
from ._training import train_alignment as train_alignment
from ._training import train_deep as train_deep
from ._training import train_objective as train_objective
from ._types import Policy as Policy

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "AutomatonHarm",
    "Certificate",
    "Comparison",
    "DPAttack",
    "DPDeep",
    "DPRecoveryGradients",
    "Equilibrium",
    "Instance",
    "Levels",
    "METHODS",
    "MLPParams",
    "MLPPolicy",
    "MarkovParams",
    "MarkovPolicy",
    "MartingaleSummary",
    "MethodOutcome",
    "MethodSettings",
    "Objective",
    "OptimizeResult",
    "Policy",
    "ProductEngine",
    "RecoverySpec",
    "Reweighted",
    "SweepResult",
    "SweepSpec",
    "TableHarm",
    "TabularPolicy",
    "TrainingResult",
    "alignment_loss",
    "analyze",
    "attack_curves",
    "attack_depth",
    "attack_length",
    "attack_success",
    "augmentation_loss",
    "augmentation_samples",
    "augmentation_variance",
    "autodiff_gradient",
    "automaton_arrays",
    "automaton_harm",
    "backward",
    "best_of_n_kl",
    "best_of_n_kl_bound",
    "best_of_n_log_weights",
    "certify",
    "certify_values",
    "check_fits",
    "compare_methods",
    "covariance_gradient",
    "covariance_weights",
    "deadline_harm",
    "deep_gradient_by_position",
    "deep_objective",
    "deep_report",
    "determined",
    "determined_masks",
    "dp_analyze",
    "dp_check_fits",
    "dp_deep_arrays",
    "dp_deep_report",
    "dp_estimate_bytes",
    "dp_martingale",
    "dp_tilted_chain",
    "dpo_log_weights",
    "dpo_loss",
    "dump_instance",
    "estimate_bytes",
    "exact_gradients",
    "exact_report",
    "expected_harm",
    "first_decisive_harm",
    "fisher_bound",
    "forward",
    "frontier_kl",
    "gibbs_gap",
    "gibbs_policy",
    "gibbs_recovery",
    "graded_harm",
    "guaranteed_recovery",
    "harm_information",
    "harm_levels",
    "harm_martingale",
    "harm_values",
    "harm_variance",
    "harmful_log_marginals",
    "harmful_prefix_marginals",
    "horizon_distribution",
    "innovations",
    "ipo_log_weights",
    "ipo_loss",
    "kl_by_position",
    "levels_from_log_cond",
    "load_instance",
    "load_sweep_spec",
    "loads_instance",
    "log_backward",
    "log_no_recovery",
    "log_partition",
    "log_recovery_probability",
    "logit_recovery",
    "martingale_summary",
    "merge_sweep_parts",
    "min_log_recovery",
    "min_recovery_probability",
    "minimize",
    "per_token_penalty_gap",
    "policy_log_probs",
    "policy_prefix_marginals",
    "prefix_covariance_sq_norm",
    "prefix_digits",
    "prune_unreachable",
    "recovery_gradient",
    "recovery_mask",
    "recovery_objective",
    "recovery_penalty",
    "recovery_spec",
    "reinforce_gradients",
    "rejection_log_weights",
    "reweight",
    "reweighted_levels",
    "reweighting",
    "robustness_bound",
    "sample_sequences",
    "sampling_versus_exact",
    "second_order_ratio",
    "separable_objective",
    "sequence_horizon",
    "sequence_kl",
    "sequence_prefix_marginals",
    "sft_loss",
    "shard_prefixes",
    "spillover_by_position",
    "standard_loss",
    "standard_optimum",
    "sweep",
    "sweep_plot",
    "sweep_replay",
    "table_harm",
    "teaching",
    "tilt",
    "tilt_kl_by_position",
    "tilt_log_weights",
    "token_wise_loss",
    "token_wise_optimum",
    "train_alignment",
    "train_deep",
    "train_objective",
    "training_report",
    "tree_sq_norm",
    "trigger_harm",
    "uniform_horizon",
    "unreachable_states",
    "untied_autodiff_gradient",
    "untied_copies_gradient",
]
