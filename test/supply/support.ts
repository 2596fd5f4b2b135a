import { locateOpa } from '../../src/policy/opa-cli.js';

export const opaBinary = (): string => locateOpa();
