"""The `dualanodiff` generator: two interrelated branches (whole image, defect part) on one frozen SD base."""
