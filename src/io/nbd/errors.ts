/** The NBD client's error: fatal (exit 1), naming the address and the request that failed. */
import { FatalError } from '../errors.js';

export class NbdError extends FatalError {
  constructor(
    message: string,
    /** The server's errno name for a failed request (ENOTSUP, EINVAL...), when it gave one. */
    readonly errno?: string,
  ) {
    super(message);
    this.name = 'NbdError';
  }
}
