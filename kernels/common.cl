// Shared definitions included by every THOMAS kernel file (OpenCL C 1.2).
#ifndef REAL
#define REAL float  // storage and accumulation type; the only one the agent builds today
#endif
